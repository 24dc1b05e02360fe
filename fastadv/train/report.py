"""What a run tells its user: the first line, one line per epoch, and the final report
(``results.json`` and a table) of best.pt and last.pt on the test set."""

from __future__ import annotations

import copy
import os

from torch import nn

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..errors import TrainConfigError
from ..data.splits import VAL_CAP, VAL_FRACTION
from . import distributed
from .job import Job
from .overfit import overfit_record
from .stall import stalled_record
from .validation import clean_and_robust_accuracy


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or compiled) wrapper."""
    return getattr(model, "module", model)


def first_line(job: Job, ctx: distributed.Context) -> str:
    cfg = job.cfg
    n_train, n_val = len(job.train), len(job.val)
    if job.val_held_out:
        held = ("--val-size" if cfg.val_size is not None else
                f"default: {VAL_FRACTION:.0%} of the training set, at most {VAL_CAP}")
        validation = f"{n_val} of the {n_train + n_val} held out for validation ({held})"
    else:
        validation = f"{n_val} given for validation"
    warmup = f" (warm-up: from 0 over {cfg.eps_warmup} epochs)" if cfg.eps_warmup else ""
    test = f"{len(job.test)} test" if job.test is not None else "no test set"
    return (f"{cfg.method} training of {cfg.model} on {cfg.dataset} ({job.describe}): "
            f"training on {n_train} examples, {validation}, {test}; "
            f"eps={cfg.eps:.4g}{warmup}, alpha={cfg.alpha:.4g}, steps={cfg.steps}, "
            f"device={ctx.device}, world size {ctx.world_size}")


def epoch_line(r: dict, epochs: int) -> str:
    line = (f"epoch {r['epoch']:>3}/{epochs}  loss {r['loss']:.4f}  batch acc "
            f"{r['batch_acc']:6.1%}  {r['images_per_s']:8.0f} img/s  {r['seconds']:6.1f} s")
    if "val_robust_acc" in r:
        line += (f"  | train clean {r['train_clean_acc']:6.1%} robust {r['train_robust_acc']:6.1%}"
                 f"  val clean {r['val_clean_acc']:6.1%} robust {r['val_robust_acc']:6.1%}"
                 + (f"  (raw weights: val robust {r['raw_val_robust_acc']:6.1%})"
                    if "raw_val_robust_acc" in r else "")
                 + ("  *best" if r.get("best") else ""))
    return line


def final_report(job: Job, ctx, rundir, history, local_batch) -> dict:
    """Test-set (or, with no test set, validation) clean and PGD accuracy of best.pt and
    last.pt (fp32), as results.json and a table; with --ema, of their averaged weights (the
    model) and their raw ones (rows ``best-raw``, ``last-raw``)."""
    cfg = job.cfg
    split, examples = ("test", job.test) if job.test is not None else ("val", job.val)
    rows = []
    for name, path in (("best", rundir.best), ("last", rundir.last)):
        if not os.path.exists(path):
            continue
        try:  # best.pt and last.pt are files too: checked like any other
            ckpt = load_checkpoint(path)
            weights = [(name, ckpt)]
            if ckpt.get("raw_model") is not None:
                weights.append((f"{name}-raw", {**ckpt, "model": ckpt["raw_model"]}))
            models = [(row, rebuilt(job, c, ctx.device)) for row, c in weights]
        except ValueError as exc:
            raise TrainConfigError(f"the final report: {exc}") from None
        for row, model in models:
            # The same random starts for every checkpoint: identical weights, identical
            # numbers.
            clean, robust = clean_and_robust_accuracy(model, examples, cfg, ctx, "fp32",
                                                      4 * local_batch, split)
            rows.append({"checkpoint": row, "epoch": ckpt["progress"]["epoch"],
                         f"{split}_clean_acc": clean, f"{split}_robust_acc": robust})
    stalled = stalled_record(history)
    overfit = overfit_record(history)
    summary = {
        "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "eps": cfg.eps,
        "weights": "exponential moving average (--ema %g)" % cfg.ema if cfg.ema else "trained",
        "attack": f"PGD-{cfg.eval_steps}, alpha=2.5*eps/{cfg.eval_steps}, 1 random start "
                  "(the same starts for every checkpoint)",
        "split": split, f"{split}_examples": len(examples), "epochs": cfg.epochs,
        "epochs_completed": len(history),
        "stalled": stalled is not None,
        "stall": None if stalled is None else {"detected_at_epoch": stalled["epoch"],
                                               "warning": stalled["stall_warning"]},
        "overfit": None if overfit is None else {"detected_at_epoch": overfit["epoch"],
                                                 "warning": overfit["overfit_warning"]},
        "stopped_early": len(history) < cfg.epochs,
        "train_seconds": sum(r["seconds"] for r in history),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
        "checkpoints": rows,
        # Robust accuracy counts a point the attack could not flip: above clean accuracy it
        # means the attack failed where no attack was needed (gradient masking, a broken
        # model), so neither number can be trusted.
        "impossible": [r["checkpoint"] for r in rows
                       if r[f"{split}_robust_acc"] > r[f"{split}_clean_acc"]],
    }
    if ctx.is_main:
        rundir.write_results(summary)
        print(summary_table(summary))
    return summary


def rebuilt(job: Job, ckpt: dict, device) -> nn.Module:
    """A checkpoint's model in eval mode: rebuilt from its recipe, or (a module of the
    caller's, weights only) a copy of the job's with the weights loaded."""
    if job.model_args is not None:
        # The run's own --model (the user's, or trusted on resume) is the only code it runs.
        return model_from_checkpoint(ckpt, device, asked_for=job.cfg.model)
    model = copy.deepcopy(unwrap(job.model))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _epochs_done(summary: dict) -> str:
    done = summary.get("epochs_completed", summary["epochs"])
    return str(done) if done == summary["epochs"] else f"{done} of {summary['epochs']}"


_SPLIT_NAMES = {"test": "test set", "val": "validation split (no test set given)"}


def summary_table(summary: dict) -> str:
    split = summary.get("split", "test")
    lines = [f"\n{summary['method']} training of {summary['model']} on {summary['dataset']}, "
             f"eps={summary['eps']:.4g}: {_epochs_done(summary)} epochs, "
             f"{summary['train_seconds']:.1f} s training + {summary['eval_seconds']:.1f} s "
             f"evaluation",
             f"{_SPLIT_NAMES[split]} ({summary[f'{split}_examples']} images), "
             f"{summary['attack']}:",
             "| checkpoint | epoch | clean accuracy | robust accuracy |",
             "|---|---:|---:|---:|"]
    for r in summary["checkpoints"]:
        lines.append(f"| {r['checkpoint']} | {r['epoch']} | {r[f'{split}_clean_acc']:.1%} "
                     f"| {r[f'{split}_robust_acc']:.1%} |")
    for name in summary.get("impossible", ()):
        lines.append(f"warning: impossible result for {name}.pt: robust accuracy above clean "
                     "accuracy (the attack failed on images the model already gets wrong "
                     "unattacked: gradient masking or a broken model); trust neither number")
    if summary.get("stalled"):
        stopped = (f"; stopped after epoch {summary['epochs_completed']} (--strict)"
                   if summary.get("stopped_early") else "")
        lines.append(f"warning: the training stalled (detected at epoch "
                     f"{summary['stall']['detected_at_epoch']}; the warning is in "
                     f"metrics.jsonl and results.json){stopped}")
    if summary.get("overfit"):
        lines.append(f"warning: catastrophic overfitting (detected at epoch "
                     f"{summary['overfit']['detected_at_epoch']}; the warning is in "
                     "metrics.jsonl and results.json)")
    return "\n".join(lines)
