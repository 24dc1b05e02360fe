"""Capacity and adversarial robustness (Madry et al., §4 and Figure 4).

The same network family at growing width (madry-cnn: 2w and 4w filters, a 64w-unit hidden
layer, as the paper doubles filters and the fully connected layer) is trained with natural
(standard), FGSM (one step of ε from x, the paper's) and PGD training, then each final model
is evaluated on the test split: clean accuracy and accuracy under PGD at the training eps.
The paper's findings: capacity alone helps robustness a little; FGSM training does not
give PGD robustness; PGD training needs capacity, and with enough of it both clean and
robust accuracy rise.

Each run goes to ``OUT/<method>-w<width>/`` (a normal trainer run directory); a run whose
results.json exists is reused and one with a last.pt but no results.json is resumed, so a
killed sweep continues where it stopped.

    python -m fastadv.experiments capacity --dataset digits    # 15 runs, ~1.5 min on 2 CPU cores
    python -m fastadv.experiments capacity --dataset mnist --widths 1,2,4,8,16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import time

import torch
from tqdm.auto import tqdm

from . import output
from .output import ExperimentError

METHODS = ("standard", "fgsm", "pgd")
METHOD_LABELS = {"standard": "natural training", "fgsm": "FGSM training",
                 "fgsm-rs": "FGSM training (random start)",
                 "pgd": "PGD training", "free": "free AT", "trades": "TRADES"}
OWNED = ("--dataset", "--model", "--width", "--method", "--out", "--resume", "--seed")


def run_dir(out: str, method: str, width: int) -> str:
    return os.path.join(out, f"{method}-w{width}")


def train_config(dataset: str, method: str, width: int, out: str, *, model: str = "madry-cnn",
                 epochs: int | None = None, eps: float | None = None,
                 steps: int | None = None, seed: int = 0, device: str | None = None,
                 data_dir: str | None = None, train_args: list[str] = ()):
    """The TrainConfig of one run, built by the trainer's own parser and ``resolve`` so the
    dataset's defaults apply. With ``steps`` given, the multi-step methods take that many
    steps (PGD with alpha = 2.5 eps / steps) and every run validates with PGD-steps. The
    held-out evaluation runs once, after the last epoch (the sweep evaluates last.pt on the
    test split itself), unless ``train_args`` says otherwise."""
    from ..train.config import DATASET_DEFAULTS, ONE_STEP, parser, resolve

    if epochs is None:
        epochs = DATASET_DEFAULTS[dataset]["epochs"]
    argv = ["--dataset", dataset, "--model", model, "--width", str(width), "--method", method,
            "--out", run_dir(out, method, width), "--seed", str(seed), "--no-progress",
            "--epochs", str(epochs), "--eval-every", str(epochs)]
    if eps is not None:
        argv += ["--eps", repr(eps)]
    if steps is not None:
        argv += ["--eval-steps", str(steps)]
        if method not in ONE_STEP:
            argv += ["--steps", str(steps)]
        if method == "pgd" and "--alpha" not in train_args:
            radius = eps if eps is not None else DATASET_DEFAULTS[dataset]["eps"]
            argv += ["--alpha", repr(2.5 * radius / steps)]
    if device is not None:
        argv += ["--device", device]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    p = parser()

    def error(message):
        raise ExperimentError(f"{_flag_of(message)}{message}")

    p.error = error  # the trainer's parser: its complaints become ours, not a SystemExit
    try:
        return resolve(p.parse_args(argv + list(train_args)))
    except ValueError as exc:
        raise ExperimentError(f"{_flag_of(str(exc))}{exc}") from None


def _flag_of(message: str) -> str:
    """Prefix for errors of settings passed through to the trainer."""
    return "" if message.startswith("--") else "--train-args: "


# --------------------------------------------------------------------------- one run


def _finished(cfg) -> bool:
    """Whether the run directory holds a finished run of exactly this config (reused), or
    an error if it holds one with other settings."""
    from ..train.config import RESUMABLE

    results = os.path.join(cfg.out, "results.json")
    if not os.path.isfile(results):
        return False
    saved = output.read_json(os.path.join(cfg.out, "config.json"), "--out")
    changed = [k for k, v in cfg.to_dict().items()
               if k not in RESUMABLE and k in saved and saved[k] != v]
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} there, {getattr(cfg, k)!r} now" for k in changed)
        raise ExperimentError(f"--out: {cfg.out} holds a finished run with other settings "
                              f"({diffs}); choose another --out or delete that run")
    return True


def train_run(cfg) -> str:
    """Trains (or resumes, or reuses) one run; its stdout goes to RUN.log beside it (the run
    folder holds the trainer's files only). Returns 'reused', 'resumed' or 'trained'."""
    from ..data import DataFileError, DatasetNotFoundError, DownloadError
    from ..train import TrainConfigError, train

    if _finished(cfg):
        return "reused"
    status = "trained"
    if os.path.isfile(os.path.join(cfg.out, "last.pt")):
        cfg, status = dataclasses.replace(cfg, resume=True), "resumed"
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    try:
        with open(cfg.out.rstrip(os.sep) + ".log", "a") as log, \
                contextlib.redirect_stdout(log):
            train(cfg)
    except (DatasetNotFoundError, DownloadError, DataFileError) as exc:
        raise ExperimentError(f"--data-dir: {exc}") from None
    except TrainConfigError as exc:
        raise ExperimentError(f"{cfg.out}: {exc}") from None
    return status


def evaluate(path: str, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
             restarts: int, seed: int, batch: int = 500, model_spec: str | None = None) -> dict:
    """Clean and PGD accuracy (l-inf eps, alpha = 2.5 eps / steps, ``restarts`` random
    starts, the worst kept) of the model in checkpoint ``path`` on (x, y)."""
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..eval import clean_and_pgd_correct

    try:  # the sweep's own --model is the only code its checkpoints may name
        model = model_from_checkpoint(load_checkpoint(path), x.device, asked_for=model_spec,
                                      origin=f"checkpoint {path!r}")
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    gen = torch.Generator(device=x.device).manual_seed(seed)
    clean, robust = clean_and_pgd_correct(model, x, y, eps=eps, steps=steps, restarts=restarts,
                                          batch_size=batch, generator=gen)
    params = sum(p.numel() for p in model.parameters())
    return {"clean_acc": clean / len(y), "pgd_acc": robust / len(y), "params": params}


def _last_loss(out: str) -> float | None:
    from .plot_run import read_metrics

    try:
        return read_metrics(out)[-1]["loss"]
    except ExperimentError:
        return None


# --------------------------------------------------------------------------- the sweep


def run(dataset: str = "digits", widths=(1, 2, 4, 8, 16), methods=METHODS, *,
        out: str = "capacity", model: str = "madry-cnn", epochs: int | None = None,
        eps: float | None = None, steps: int | None = None, eval_steps: int | None = None,
        eval_restarts: int = 2, n_examples: int | None = None, seed: int = 0,
        device: str | None = None, data_dir: str | None = None, train_args=(),
        progress: bool = True) -> dict:
    """Trains every width x method (reusing finished runs) and evaluates each final model;
    returns the JSON-ready table."""
    from ..data import DatasetNotFoundError, DownloadError, load_run_dataset
    from ..train.config import DATASET_DEFAULTS

    if dataset not in DATASET_DEFAULTS:
        raise ExperimentError(f"--dataset must be one of {', '.join(DATASET_DEFAULTS)}, "
                              f"got {dataset!r}")
    bad = [m for m in methods if m not in METHOD_LABELS]
    if bad or not methods:
        raise ExperimentError(f"--methods must list some of {', '.join(METHOD_LABELS)}, got "
                              f"{','.join(methods)!r}")
    for flag, value in (("--eval-steps", eval_steps), ("--eval-restarts", eval_restarts),
                        ("--n-examples", n_examples), ("--epochs", epochs),
                        ("--steps", steps)):
        if value is not None and value < 1:
            raise ExperimentError(f"{flag} must be >= 1, got {value}")
    for flag in OWNED:
        if flag in train_args:
            raise ExperimentError(f"--train-args: {flag} is set by the sweep itself")
    dev = output.checked_device(device)
    runs = [(m, w, train_config(dataset, m, w, out, model=model, epochs=epochs, eps=eps,
                                steps=steps, seed=seed, device=str(dev), data_dir=data_dir,
                                train_args=train_args))
            for w in widths for m in methods]  # every config checked before any training
    cfg0 = runs[0][2]
    eval_steps = eval_steps or DATASET_DEFAULTS[dataset]["steps"]
    try:  # the runs' own split (their seed), so no test example was trained on
        data = load_run_dataset(cfg0.to_dict(), download=cfg0.download)
    except (DatasetNotFoundError, DownloadError, ValueError) as exc:
        raise ExperimentError(f"--data-dir: {exc}") from None
    n = min(n_examples or len(data.y_test), len(data.y_test))
    x_test, y_test = data.x_test[:n].to(dev), data.y_test[:n].to(dev)

    started = time.perf_counter()
    rows = []
    bar = tqdm(runs, desc="capacity", unit="run", disable=not progress, dynamic_ncols=True)
    for method, width, cfg in bar:
        bar.set_postfix(method=method, width=width)
        t0 = time.perf_counter()
        status = train_run(cfg)
        wall = time.perf_counter() - t0
        results = output.read_json(os.path.join(cfg.out, "results.json"), "--out")
        t1 = time.perf_counter()
        ev = evaluate(os.path.join(cfg.out, "last.pt"), x_test, y_test, eps=cfg.eps,
                      steps=eval_steps, restarts=eval_restarts, seed=seed,
                      model_spec=cfg.model)
        rows.append({"method": method, "width": width, **ev,
                     "train_loss": _last_loss(cfg.out), "epochs": cfg.epochs,
                     "train_seconds": results["train_seconds"],
                     "train_wall_seconds": wall if status != "reused" else None,
                     "eval_seconds": time.perf_counter() - t1, "status": status,
                     "run": cfg.out})
        bar.set_postfix(method=method, width=width, clean=f"{ev['clean_acc']:.0%}",
                        pgd=f"{ev['pgd_acc']:.0%}")
    bar.close()
    return {
        "experiment": "capacity",
        "claim": "Madry et al. Fig. 4: robustness to PGD needs PGD training and capacity",
        "dataset": dataset, "model": model, "widths": list(widths), "methods": list(methods),
        "train": {"epochs": cfg0.epochs, "eps": cfg0.eps, "steps": cfg0.steps,
                  "pgd_alpha": next((c.alpha for m, _, c in runs if m == "pgd"), None),
                  "optimizer": cfg0.optimizer, "lr": cfg0.lr, "batch_size": cfg0.batch_size,
                  "seed": seed, "train_args": list(train_args)},
        "eval": {"split": "test", "examples": n, "attack": f"PGD-{eval_steps}", "norm": "linf",
                 "eps": cfg0.eps, "alpha": 2.5 * cfg0.eps / eval_steps, "steps": eval_steps,
                 "restarts": eval_restarts, "checkpoint": "last.pt"},
        "rows": rows,
        "total_seconds": time.perf_counter() - started,
        "environment": output.environment(dev),
    }


# --------------------------------------------------------------------------- report


def table(result: dict) -> str:
    e = result["eval"]
    lines = [f"\n{result['model']} on {result['dataset']}, {result['train']['epochs']} epochs, "
             f"eps={e['eps']:.3g}; test ({e['examples']} images) under {e['attack']} x "
             f"{e['restarts']} restarts",
             "| training | width | params | clean acc | PGD acc | final train loss | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        loss = f"{r['train_loss']:.4f}" if r["train_loss"] is not None else "-"
        lines.append(f"| {r['method']} | {r['width']} | {r['params']:,} | {r['clean_acc']:.1%} "
                     f"| {r['pgd_acc']:.1%} | {loss} | {r['train_seconds']:.1f} |")
    lines.append(f"total {result['total_seconds']:.0f} s on {result['environment']['device']}")
    return "\n".join(lines)


def plot(result: dict, path: str):
    """Clean accuracy, PGD accuracy and the final training loss against width (log2), one
    line per training method (the shape of the paper's Figure 4)."""
    fig = output.new_figure(12, 3.7)
    axes = fig.subplots(1, 3)
    e = result["eval"]
    fig.suptitle(f"capacity: {result['model']} on {result['dataset']} "
                 f"({result['train']['epochs']} epochs, eps={e['eps']:.3g})")
    panels = (("clean_acc", "clean test accuracy"),
              ("pgd_acc", f"test accuracy under {e['attack']} x {e['restarts']}"),
              ("train_loss", "final training loss (at the method's points)"))
    for ax, (key, title) in zip(axes, panels):
        for i, method in enumerate(result["methods"]):
            pts = sorted((r["width"], r[key]) for r in result["rows"]
                         if r["method"] == method and r[key] is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{i}", label=METHOD_LABELS[method])
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["widths"], [str(w) for w in result["widths"]])
        ax.minorticks_off()
        ax.set_xlabel("width w (2w, 4w filters; 64w hidden units)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if key == "train_loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    output.save_figure(fig, path)
    return fig


# --------------------------------------------------------------------------- command line


def add_parser(sub) -> argparse.ArgumentParser:
    from ..data import DATASETS
    from ..cli_common import number

    p = sub.add_parser(
        "capacity", help="natural/FGSM/PGD training at growing width (Fig. 4)",
        description="Train madry-cnn at each --widths with each --methods (python -m "
                    "fastadv.train runs in OUT/<method>-w<width>/, finished runs reused), "
                    "evaluate clean and PGD test accuracy, write OUT/capacity.json and "
                    "OUT/capacity.png. Unset flags take the trainer's dataset defaults "
                    "(python -m fastadv.train --help); validation runs only after the last "
                    "epoch.")
    a = p.add_argument
    a("--dataset", default="digits", choices=DATASETS)
    a("--data-dir", help="where the dataset files are")
    a("--widths", default="1,2,4,8,16", help="comma-separated width multipliers")
    a("--methods", default=",".join(METHODS),
      help="comma-separated training methods (standard = natural training; the paper's "
           "three by default; fgsm-rs, free and trades too)")
    a("--model", default="madry-cnn", choices=("madry-cnn", "small-cnn"),
      help="the width-scaled network family")
    a("--epochs", type=int, help="epochs of every run")
    a("--eps", type=number, help="l-inf radius of training and evaluation")
    a("--steps", type=int, help="PGD steps of PGD training (alpha = 2.5 eps / steps)")
    a("--eval-steps", type=int, help="PGD steps of the evaluation (default: the dataset's "
                                     "training steps: digits 10, mnist 40, cifar10 10)")
    a("--eval-restarts", type=int, default=2, help="random restarts of the evaluation")
    a("--n-examples", type=int, help="first N test examples evaluated (default: all)")
    a("--train-args", default="", help="more trainer flags for every run, quoted: "
                                       "\"--lr 1e-3 --optimizer adam\"")
    a("--seed", type=int, default=0)
    a("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    a("--out", default="capacity", help="folder for the runs, capacity.json and capacity.png")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    output.add_overwrite_flag(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    widths = output.parse_int_list(args.widths, "--widths")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        train_args = shlex.split(args.train_args)
    except ValueError as exc:
        raise ExperimentError(f"--train-args: {exc}") from None
    # Checked first: an hour of training must not end on an output it may not write.
    prefix = os.path.join(args.out, "capacity")
    output.refuse_existing(prefix, "--out", args.overwrite)
    result = run(args.dataset, widths, methods, out=args.out, model=args.model,
                 epochs=args.epochs, eps=args.eps, steps=args.steps, eval_steps=args.eval_steps,
                 eval_restarts=args.eval_restarts, n_examples=args.n_examples, seed=args.seed,
                 device=args.device, data_dir=args.data_dir, train_args=train_args,
                 progress=args.progress)
    json_path, png_path = output.output_paths(prefix, "--out", args.overwrite)
    output.save_json(result, json_path)
    plot(result, png_path)
    print(table(result))
    print(f"wrote {json_path} and {png_path}")
    return 0
