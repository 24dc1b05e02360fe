"""The loss landscape of the inner maximum (Madry et al., §3 and Figure 1).

For a few test examples, PGD runs from many random starts in the ε-ball and the
cross-entropy loss of every final point is kept. The paper's claim: the local maxima PGD
finds are numerous and spread over the ball, but their loss values are tightly
concentrated, with no outliers far above the rest, so PGD's answer is about as good as any
first-order method's.

The R restarts of one example are R copies of it in one batch (``attack_chunk``: one random
start per row, K steps on all rows at once), split into chunks of ``max_batch`` rows to fit
memory. The starts of chunk j of example i come from a generator seeded by
(``seed``, i, j), and the random-start kernel is counter based (row r's noise depends only
on the seed and r), so a run with fewer restarts (same seed and max_batch) sees exactly a
prefix of a longer run's restarts.

    python -m fastadv.experiments landscape --checkpoint runs/digits-standard/best.pt \\
        --checkpoint runs/digits-pgd/best.pt --restarts 10000 --examples 5
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import attack_mode
from ..attacks.core import AttackConfig, attack_chunk
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..cli_common import MAX_COUNT, MAX_SEED
from . import output
from .output import ExperimentError

QUANTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass
class LoadedModel:
    path: str
    label: str
    config: dict
    model: nn.Module


# --------------------------------------------------------------------------- inputs


def load_models(paths: list[str], device: torch.device,
                trust_code: bool = False) -> list[LoadedModel]:
    """Each checkpoint's model (eval mode, on ``device``) with its training config; a model
    whose spec names code is built only with ``trust_code`` (fastadv.load_model's rule)."""
    if not paths:
        raise ExperimentError("--checkpoint is required (a best.pt or last.pt written by "
                              "python -m fastadv.train); give it twice to compare two models")
    models = []
    for path in paths:
        try:
            ckpt = load_checkpoint(path)
            model = model_from_checkpoint(ckpt, device, trust_code=trust_code,
                                          origin=f"checkpoint {path!r}")
        except (FileNotFoundError, ValueError) as exc:
            raise ExperimentError(f"--checkpoint: {exc}") from None
        cfg = ckpt["config"]
        run = os.path.basename(os.path.dirname(os.path.abspath(path)))
        label = f"{cfg.get('method', '?')} training ({run})"
        models.append(LoadedModel(path, label, cfg, model))
    return models


def load_test_split(models: list[LoadedModel], dataset: str | None, data_dir: str | None):
    """The test split of the checkpoints' dataset (all must share it), as the trainer loaded
    it (the digits split and synthetic data depend on the run's seed)."""
    from ..data import DatasetNotFoundError, DownloadError, load_run_dataset

    first = models[0].config
    for m in models[1:]:
        if m.config["dataset"] != first["dataset"]:
            raise ExperimentError(
                f"--checkpoint: {models[0].path} was trained on {first['dataset']} but "
                f"{m.path} on {m.config['dataset']}; compare models of one dataset")
    if dataset is not None and dataset != first["dataset"]:
        raise ExperimentError(f"--dataset {dataset}: the checkpoints were trained on "
                              f"{first['dataset']}")
    try:
        data = load_run_dataset(first, data_dir)
    except (DatasetNotFoundError, DownloadError, ValueError) as exc:
        raise ExperimentError(f"--data-dir: {exc}") from None
    return data


def pick_examples(models: list[LoadedModel], x: Tensor, y: Tensor, count: int,
                  indices: list[int] | None, batch: int = 1024) -> Tensor:
    """Test indices to study: ``indices`` as given, or the first ``count`` test examples that
    every model classifies correctly (a misclassified point has nothing to maximise)."""
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(y)]
        if bad:
            raise ExperimentError(f"--indices: {bad[0]} is outside the test split "
                                  f"(0..{len(y) - 1})")
        return torch.tensor(indices, dtype=torch.int64)
    correct = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for m in models:
            device = next(m.model.parameters()).device
            pred = torch.cat([m.model(xb.to(device)).argmax(1).cpu() for xb in x.split(batch)])
            correct &= pred == y
    chosen = correct.nonzero().flatten()[:count]
    if len(chosen) < count:
        raise ExperimentError(f"--examples {count}: only {len(chosen)} test examples are "
                              "classified correctly by every model")
    return chosen


# --------------------------------------------------------------------------- the workload


def _chunk_seed(seed: int, index: int, chunk: int) -> int:
    return ((seed * 1_000_003 + index) * 65_537 + chunk) % (2**63 - 1)


def restart_losses(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float,
                   steps: int, restarts: int, max_batch: int, seed: int, index: int,
                   bar=None) -> tuple[Tensor, Tensor, float]:
    """PGD from ``restarts`` random starts of one example ``x`` ``[C, H, W]`` (label ``y``),
    as batches of up to ``max_batch`` copies. Returns (final cross-entropy loss per restart
    [R] fp32 on the CPU, whether each final point fools the model [R], seconds spent
    attacking, synchronised)."""
    device = x.device
    losses = torch.empty(restarts, dtype=torch.float32)
    fooled = torch.empty(restarts, dtype=torch.bool)
    seconds = 0.0
    for chunk, r0 in enumerate(range(0, restarts, max_batch)):
        n = min(max_batch, restarts - r0)
        gen = torch.Generator(device=device).manual_seed(_chunk_seed(seed, index, chunk))
        cfg = AttackConfig(eps=eps, alpha=alpha, steps=steps, norm="linf", random_start=True,
                      loss="ce", targeted=False, lower=0.0, upper=1.0, precision="fp32",
                      generator=gen)
        xs = x.unsqueeze(0).expand(n, *x.shape).contiguous()
        ys = y.view(1).expand(n).contiguous()
        output.synchronize(device)
        t0 = time.perf_counter()
        _, loss, fool = attack_chunk(model, xs, ys, cfg, evaluate=True)
        output.synchronize(device)
        seconds += time.perf_counter() - t0
        losses[r0:r0 + n] = loss.float().cpu()
        fooled[r0:r0 + n] = fool.cpu()
        if bar is not None:
            bar.update(n)
    return losses, fooled, seconds


def sequential_rate(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float,
                    steps: int, count: int, seed: int, index: int) -> dict:
    """``count`` restarts of one example run one at a time (a batch of 1 each), as a loop
    without batched restarts would: restarts per second, and their mean loss as a check that
    both ways sample the same distribution."""
    losses, _, seconds = restart_losses(model, x, y, eps=eps, alpha=alpha, steps=steps,
                                        restarts=count, max_batch=1, seed=seed + 1,
                                        index=index)
    return {"restarts": count, "seconds": seconds, "restarts_per_s": count / seconds,
            "mean_loss": losses.mean().item()}


def expected_best(sorted_losses: Tensor, r: int) -> float:
    """E[max of r restarts drawn without replacement from these n]: the k-th smallest is the
    maximum with probability C(k-1, r-1) / C(n, r) (exact, via log-gamma)."""
    n = len(sorted_losses)
    k = torch.arange(r, n + 1, dtype=torch.float64)
    logp = (torch.lgamma(k) - math.lgamma(r) - torch.lgamma(k - r + 1)
            - (math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)))
    return float((logp.exp() * sorted_losses[r - 1:].double()).sum())


def summarize(losses: Tensor, fooled: Tensor, clean_loss: float, bins: int) -> dict:
    """Spread and shape of the final losses of one example's restarts."""
    s = losses.double().sort().values
    n = len(s)
    q = torch.quantile(s, torch.tensor([p / 100 for p in QUANTILES], dtype=torch.float64))
    lo, hi = s[0].item(), s[-1].item()
    mean, std = s.mean().item(), s.std(correction=0).item() if n > 1 else 0.0
    p99 = q[-1].item()
    edges = torch.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1, dtype=torch.float64)
    counts = torch.histc(s, bins=bins, min=edges[0].item(), max=edges[-1].item())
    rs = sorted({r for r in (1, 10, 100, 1000, 10_000, 100_000) if r <= n} | {n})
    return {
        "clean_loss": clean_loss, "min": lo, "max": hi, "mean": mean, "std": std,
        "quantiles": {f"p{p}": v for p, v in zip(QUANTILES, q.tolist())},
        "spread": hi - lo,
        "iqr": q[QUANTILES.index(75)].item() - q[QUANTILES.index(25)].item(),
        "max_minus_p99": hi - p99,
        # How far the single best restart sits above the rest, in standard deviations: about
        # 3.9 for 10^4 Gaussian draws; an isolated, much better maximum would score far more.
        "max_z": (hi - mean) / std if std > 0 else 0.0,
        "max_minus_clean": hi - clean_loss,
        "fooled_fraction": fooled.double().mean().item(),
        "expected_best": {str(r): expected_best(s, r) for r in rs},
        "histogram": {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]},
    }


# --------------------------------------------------------------------------- the experiment


def run(checkpoints: list[str], *, dataset: str | None = None, data_dir: str | None = None,
        eps: float | None = None, steps: int | None = None, alpha: float | None = None,
        restarts: int = 10_000, examples: int = 5, indices: list[int] | None = None,
        max_batch: int | None = None, seed: int = 0, device: str | None = None,
        sequential_check: int = 0, bins: int = 50, progress: bool = True,
        trust_code: bool = False):
    """Runs the landscape study; returns (result, losses, images): the JSON-ready result,
    the final losses ``[models, examples, restarts]`` and the studied test images."""
    check_args(restarts=restarts, examples=examples, steps=steps, eps=eps, alpha=alpha,
               max_batch=max_batch, sequential_check=sequential_check, bins=bins, seed=seed)
    dev = output.checked_device(device)
    models = load_models(checkpoints, dev, trust_code)
    data = load_test_split(models, dataset, data_dir)
    if eps is None:
        trained = {m.config["eps"] for m in models}
        if len(trained) > 1:
            raise ExperimentError("--eps: the checkpoints were trained at different eps ("
                                  + ", ".join(f"{e:.4g}" for e in sorted(trained))
                                  + "); give the radius to study")
        eps = trained.pop()
    if steps is None:
        steps = max(int(m.config.get("steps", 40)) for m in models)
    if alpha is None:
        alpha = 2.5 * eps / steps
    if max_batch is None:
        # On the 2-core CPU the digits model ran 2.1k restarts/s at 128-256 rows against
        # 1.6k at 1024 and 1.0k at 4096 (cache); GPUs want large batches.
        max_batch = 4096 if dev.type == "cuda" else 256
    if eps == 0:
        raise ExperimentError("--eps must be > 0 (the ball the restarts start in)")
    idx = pick_examples(models, data.x_test, data.y_test, examples, indices)
    x_all, y_all = data.x_test[idx].to(dev), data.y_test[idx].to(dev)
    selection = ("as given by --indices" if indices is not None else
                 f"the first {examples} test examples every model classifies correctly")

    total = len(models) * len(idx) * restarts
    bar = tqdm(total=total, unit="restart", desc="landscape", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    per_model, all_losses = [], []
    for m in models:
        with attack_mode(m.model):
            # Warm-up (untimed), at the timed chunk size: first calls allocate and pick kernels.
            restart_losses(m.model, x_all[0], y_all[0], eps=eps, alpha=alpha, steps=1,
                           restarts=min(restarts, max_batch), max_batch=max_batch,
                           seed=seed, index=-1)
            with torch.no_grad():
                clean = F.cross_entropy(m.model(x_all).float(), y_all, reduction="none").cpu()
            rows, model_losses, seconds = [], [], 0.0
            for i, (x, y) in enumerate(zip(x_all, y_all)):
                bar.set_postfix(model=m.config["method"], example=int(idx[i]))
                losses, fooled, sec = restart_losses(
                    m.model, x, y, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                    max_batch=max_batch, seed=seed, index=int(idx[i]), bar=bar)
                seconds += sec
                model_losses.append(losses)
                rows.append({"index": int(idx[i]), "label": int(y), "seconds": sec,
                             **summarize(losses, fooled, clean[i].item(), bins)})
            sequential = None
            if sequential_check:
                bar.set_postfix(model=m.config["method"], sequential=sequential_check)
                sequential = sequential_rate(m.model, x_all[0], y_all[0], eps=eps,
                                             alpha=alpha, steps=steps, count=sequential_check,
                                             seed=seed, index=int(idx[0]))
                batched = len(idx) * restarts / seconds  # over every example
                sequential.update(batched_restarts_per_s=batched,
                                  speedup=batched / sequential["restarts_per_s"])
        all_losses.append(torch.stack(model_losses))
        per_model.append({
            "checkpoint": m.path, "label": m.label, "method": m.config["method"],
            "model": m.config["model"], "width": m.config.get("width"),
            "train_eps": m.config["eps"], "train_steps": m.config.get("steps"),
            "attack_seconds": seconds, "restarts_per_s": len(idx) * restarts / seconds,
            "gradient_steps_per_s": len(idx) * restarts * steps / seconds,
            "sequential": sequential,
            "summary": _model_summary(rows),
            "examples": rows,
        })
    bar.close()
    result = {
        "experiment": "landscape",
        "claim": "Madry et al. Fig. 1: final PGD losses over random restarts are tightly "
                 "concentrated, with no outliers far above",
        "dataset": models[0].config["dataset"], "split": "test",
        "data_seed": models[0].config.get("seed", 0),
        "examples": {"indices": idx.tolist(), "labels": data.y_test[idx].tolist(),
                     "selection": selection},
        "attack": {"norm": "linf", "eps": eps, "alpha": alpha, "steps": steps,
                   "restarts": restarts, "loss": "cross-entropy of the final point (fp32)",
                   "start": "uniform in the eps-ball, clipped to [0, 1]",
                   "max_batch": max_batch, "seed": seed},
        "models": per_model,
        "environment": output.environment(dev),
    }
    return result, torch.stack(all_losses), data.x_test[idx]


def _model_summary(rows: list[dict]) -> dict:
    def med(key):
        vals = sorted(r[key] for r in rows)
        return vals[len(vals) // 2] if len(vals) % 2 else sum(vals[len(vals) // 2 - 1:
                                                                  len(vals) // 2 + 1]) / 2
    return {"median_spread": med("spread"), "largest_spread": max(r["spread"] for r in rows),
            "median_iqr": med("iqr"), "largest_max_z": max(r["max_z"] for r in rows),
            "largest_max_minus_p99": max(r["max_minus_p99"] for r in rows),
            "mean_fooled_fraction": sum(r["fooled_fraction"] for r in rows) / len(rows),
            "smallest_max_minus_clean": min(r["max_minus_clean"] for r in rows)}


def check_args(*, restarts, examples, steps, eps, alpha, max_batch, sequential_check, bins,
               seed=0):
    def need(ok, message):
        if not ok:
            raise ExperimentError(message)

    for flag, value, low in (("--restarts", restarts, 1), ("--examples", examples, 1),
                             ("--steps", steps, 1), ("--max-batch", max_batch, 1),
                             ("--sequential-check", sequential_check, 0), ("--bins", bins, 2)):
        need(value is None or (isinstance(value, int) and low <= value <= MAX_COUNT),
             f"{flag} must be an integer in [{low}, {MAX_COUNT}], got {value!r}")
    need(isinstance(seed, int) and 0 <= seed <= MAX_SEED,
         f"--seed must lie in [0, {MAX_SEED}], got {seed!r}")
    need(eps is None or 0.0 <= eps <= 1.0, f"--eps must lie in [0, 1], got {eps}")
    need(alpha is None or 0.0 < alpha <= 1.0, f"--alpha must lie in (0, 1], got {alpha}")


# --------------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    value += 0.0  # no "-0"
    return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.3g}"


def table(result: dict) -> str:
    a = result["attack"]
    lines = [f"\nfinal PGD-{a['steps']} losses, eps={a['eps']:.4g}, alpha={a['alpha']:.4g}, "
             f"{a['restarts']} random restarts per example ({result['examples']['selection']})",
             "| model | test # | clean loss | min | p1 | median | p99 | max | max-min | max z "
             "| fooled |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        for r in m["examples"]:
            q = r["quantiles"]
            lines.append(f"| {m['label']} | {r['index']} | {_fmt(r['clean_loss'])} | {r['min']:.4g} "
                         f"| {q['p1']:.4g} | {q['p50']:.4g} | {q['p99']:.4g} | {r['max']:.4g} "
                         f"| {r['spread']:.3g} | {r['max_z']:.2f} "
                         f"| {r['fooled_fraction']:.1%} |")
    for m in result["models"]:
        line = (f"{m['label']}: {m['restarts_per_s']:.0f} restarts/s batched "
                f"({m['attack_seconds']:.1f} s attacking)")
        if m["sequential"]:
            s = m["sequential"]
            line += (f"; one at a time: {s['restarts_per_s']:.1f} restarts/s over {s['restarts']}"
                     f" -> batched is {s['speedup']:.1f}x faster")
        lines.append(line)
    lines.append(f"on {result['environment']['device']}")
    return "\n".join(lines)


def plot(result: dict, path: str, images: Tensor | None = None):
    """One row per example, one column per model (plus the image): the histogram of final
    losses over restarts, counts on a log axis, as the paper's Figure 1. Returns the figure."""
    models, k = result["models"], len(result["examples"]["indices"])
    first = 1 if images is not None else 0
    cols = first + len(models)
    ratios = ([0.45] if images is not None else []) + [1.0] * len(models)
    fig = output.new_figure(0.8 + 3.4 * len(models) + (1.0 if images is not None else 0),
                         0.9 + 1.9 * k)
    axes = fig.subplots(k, cols, squeeze=False, gridspec_kw={"width_ratios": ratios})
    a = result["attack"]
    fig.suptitle(f"{result['dataset']}: final loss of PGD-{a['steps']} (eps={a['eps']:.3g})\n"
                 f"from {a['restarts']:,} random starts per example", fontsize=10)
    for row in range(k):
        if images is not None:
            ax = axes[row][0]
            img = images[row].detach().cpu().float()
            ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"test #{result['examples']['indices'][row]}, "
                         f"y={result['examples']['labels'][row]}", fontsize=8)
        for col, m in enumerate(models):
            r = m["examples"][row]
            ax = axes[row][first + col]
            edges, counts = r["histogram"]["edges"], r["histogram"]["counts"]
            color = f"C{col}"
            ax.hist(edges[:-1], bins=edges, weights=counts, log=True, color=color, alpha=0.85)
            ax.set_ylim(0.7, max(counts) * 60)  # headroom (log axis) for the numbers
            ax.text(0.98, 0.95, f"clean {_fmt(r['clean_loss'])}, max−min {r['spread']:.3g}\n"
                    f"max z {r['max_z']:.1f}, fooled {r['fooled_fraction']:.0%}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=7,
                    bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.8))
            ax.tick_params(labelsize=7)
            if row == 0:
                ax.set_title(m["label"], fontsize=9)
            if row == k - 1:
                ax.set_xlabel("final loss", fontsize=8)
            if col == 0:
                ax.set_ylabel("restarts (log)", fontsize=8)
    output.save_figure(fig, path)
    return fig


# --------------------------------------------------------------------------- command line


def add_parser(sub) -> argparse.ArgumentParser:
    from ..cli_common import number

    p = sub.add_parser(
        "landscape", help="histogram of final PGD losses over many random restarts (Fig. 1)",
        description="For each chosen test example, run PGD from many random starts (batched: "
                    "R copies of the example per forward pass, chunked by --max-batch) and "
                    "plot the histogram of final cross-entropy losses, one column per "
                    "--checkpoint. Writes OUT.json and OUT.png.")
    a = p.add_argument
    a("--checkpoint", action="append", default=[], metavar="PATH",
      help="best.pt/last.pt of a python -m fastadv.train run; repeat to compare models "
           "(e.g. a standard and a PGD-trained one)")
    a("--dataset", help="the checkpoints' dataset (default: read from the checkpoint)")
    a("--data-dir", help="where the dataset files are (default: the run's)")
    a("--eps", type=number, help="l-inf radius (default: the checkpoints' training eps)")
    a("--steps", type=int, help="PGD steps (default: the checkpoints' training steps, the "
                                "largest if they differ)")
    a("--alpha", type=number, help="step size (default: 2.5 eps / steps)")
    a("--restarts", type=int, default=10_000, help="random starts per example")
    a("--examples", type=int, default=5,
      help="study the first K test examples every model classifies correctly")
    a("--indices", help="comma-separated test indices to study instead of --examples")
    a("--max-batch", type=int, help="rows (restarts of one example) per forward pass "
                                    "(default: 4096 on CUDA, 256 on CPU)")
    a("--sequential-check", type=int, default=0, metavar="N",
      help="also time N restarts run one at a time (batch of 1) and report both rates")
    a("--bins", type=int, default=50, help="histogram bins per example")
    a("--seed", type=int, default=0, help="seeds the random starts")
    a("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    a("--out", default="landscape", help="output prefix: writes OUT.json and OUT.png")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a("--trust-model-code", action="store_true",
      help="build a checkpoint's package.module:factory model (imports and runs that code: "
           "only for checkpoints whose author you trust)")
    output.add_overwrite_flag(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    json_path, png_path = output.output_paths(args.out, overwrite=args.overwrite)
    indices = None
    if args.indices is not None:
        indices = output.parse_int_list(args.indices, "--indices", low=0)
    result, _, images = run(
        args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, eps=args.eps,
        steps=args.steps, alpha=args.alpha, restarts=args.restarts,
        examples=len(indices) if indices else args.examples, indices=indices,
        max_batch=args.max_batch, seed=args.seed, device=args.device,
        sequential_check=args.sequential_check, bins=args.bins, progress=args.progress,
        trust_code=args.trust_model_code)
    output.save_json(result, json_path)
    plot(result, png_path, images)
    print(table(result))
    print(f"wrote {json_path} and {png_path}")
    return 0
