"""A training run's curves (Madry et al., §5): the adversarial training loss per epoch (for
PGD training, the saddle-point objective: the loss at the PGD points the weights are
fitted to) decreasing steadily, beside clean and robust accuracy on the training subset and
the held-out validation split.

    python -m fastadv.experiments plot-run runs/digits-pgd   # -> runs/digits-pgd/run.{png,json}
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from . import output
from .output import ExperimentError

ACCURACIES = ("train_clean_acc", "train_robust_acc", "val_clean_acc", "val_robust_acc")

LOSS_NAMES = {
    "pgd": "adversarial loss at PGD-{steps} points (saddle-point objective)",
    "fgsm": "loss at FGSM points",
    "fgsm-rs": "loss at FGSM-RS points",
    "free": "loss at free-AT points",
    "trades": "TRADES objective",
    "standard": "clean training loss",
}


def read_metrics(run_dir: str) -> list[dict]:
    """RUN/metrics.jsonl as a list of epoch records; clear errors for a folder that is not
    a run or has no finished epoch."""
    if not os.path.isdir(run_dir):
        raise ExperimentError(f"RUN {run_dir!r} is not a directory (give a folder written by "
                              "python -m fastadv.train --out RUN)")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ExperimentError(f"RUN {run_dir!r} has no metrics.jsonl: not a python -m "
                              "fastadv.train run directory")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExperimentError(f"RUN {run_dir!r}: metrics.jsonl line {number} is not "
                                      f"JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "epoch" not in record or "loss" not in record:
                raise ExperimentError(f"RUN {run_dir!r}: metrics.jsonl line {number} has no "
                                      "epoch/loss fields")
            records.append(record)
    if not records:
        raise ExperimentError(f"RUN {run_dir!r} has no metrics yet (metrics.jsonl is empty: "
                              "no epoch has finished)")
    return records


def loss_trend(losses: list[float]) -> dict:
    """How the training loss moved: first, last, lowest, and the share of epoch-to-epoch
    changes that were decreases."""
    steps = list(zip(losses, losses[1:]))
    low = min(range(len(losses)), key=losses.__getitem__)
    return {
        "first": losses[0], "last": losses[-1], "min": losses[low], "min_epoch_index": low,
        "relative_decrease": (losses[0] - losses[-1]) / losses[0] if losses[0] else 0.0,
        "decreasing_fraction": (sum(b < a for a, b in steps) / len(steps)) if steps else None,
    }


def run(run_dir: str) -> dict:
    """The run's curves and a summary, JSON-ready."""
    records = read_metrics(run_dir)
    config_path = os.path.join(run_dir, "config.json")
    config = output.read_json(config_path, "RUN") if os.path.isfile(config_path) else {}
    results_path = os.path.join(run_dir, "results.json")
    results = output.read_json(results_path, "RUN") if os.path.isfile(results_path) else None
    curves = {"epoch": [r["epoch"] for r in records], "loss": [r["loss"] for r in records],
              "batch_acc": [r.get("batch_acc") for r in records],
              "lr": [r.get("lr") for r in records]}
    for key in ACCURACIES:
        curves[key] = [r.get(key) for r in records]
    parts = sorted({name for r in records for name in r.get("loss_parts", {})})
    if parts:  # the method's loss terms (TRADES: natural CE, robust KL)
        curves["loss_parts"] = {n: [r.get("loss_parts", {}).get(n) for r in records]
                                for n in parts}
    best = [r["epoch"] for r in records if r.get("best")]
    method = config.get("method")
    return {
        "experiment": "plot-run", "run": os.path.abspath(run_dir),
        "dataset": config.get("dataset"), "model": config.get("model"),
        "width": config.get("width"), "method": method, "eps": config.get("eps"),
        "steps": config.get("steps"), "eval_steps": config.get("eval_steps"),
        "epochs_planned": config.get("epochs"),
        "epochs_done": len(records),
        "loss_name": LOSS_NAMES.get(method, "training loss").format(steps=config.get("steps")),
        "loss_trend": loss_trend(curves["loss"]),
        "best_epoch": best[-1] if best else None,
        "seconds": sum(r.get("seconds", 0.0) for r in records),
        "test": results["checkpoints"] if results else None,
        "curves": curves,
        "environment": {**output.environment(torch.device("cpu")),
                        "training_device": config.get("device"),
                        "training_world_size": config.get("world_size")},
    }


def plot(result: dict, path: str):
    """Left: the training loss per epoch; right: train/val clean and robust accuracy."""
    c = result["curves"]
    fig = output.new_figure(10.5, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    title = f"{result.get('method') or '?'} training of {result.get('model') or '?'}"
    if result.get("width"):
        title += f" (width {result['width']})"
    title += f" on {result.get('dataset') or '?'}"
    if result.get("eps") is not None:
        title += f", eps={result['eps']:.3g}"
    fig.suptitle(title)

    ax_loss.plot(c["epoch"], c["loss"], "o-", ms=3, color="C3",
                 label="training loss" if c.get("loss_parts") else None)
    for i, (name, values) in enumerate(c.get("loss_parts", {}).items()):
        pts = [(e, v) for e, v in zip(c["epoch"], values) if v is not None]
        ax_loss.plot(*zip(*pts), "--", color=f"C{4 + i}", label=name)
    if c.get("loss_parts"):
        ax_loss.legend(fontsize=7)
    positive = [v for v in c["loss"] if v > 0]
    if positive and len(positive) == len(c["loss"]) and max(positive) / min(positive) > 30:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(result["loss_name"], fontsize=9)
    ax_loss.grid(alpha=0.3)

    styles = {"train_clean_acc": ("C0", "-", "train clean"),
              "train_robust_acc": ("C1", "-", "train robust"),
              "val_clean_acc": ("C0", "--", "val clean"),
              "val_robust_acc": ("C1", "--", "val robust")}
    for key, (color, ls, label) in styles.items():
        pts = [(e, v) for e, v in zip(c["epoch"], c[key]) if v is not None]
        if pts:
            ax_acc.plot(*zip(*pts), ls, color=color, label=label, marker="o", ms=2.5)
    if result.get("best_epoch") is not None:
        ax_acc.axvline(result["best_epoch"], color="0.5", lw=0.8, ls=":",
                       label=f"best (epoch {result['best_epoch']})")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    attack = f"PGD-{result['eval_steps']}" if result.get("eval_steps") else "PGD"
    ax_acc.set_title(f"accuracy (robust: {attack} at eps={result.get('eps') or 0:.3g})",
                     fontsize=9)
    ax_acc.grid(alpha=0.3)
    if ax_acc.lines:
        ax_acc.legend(fontsize=8, loc="lower right")
    output.save_figure(fig, path)
    return fig


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot-run", help="a training run's loss and accuracies per epoch (§5)",
        description="Reads RUN/metrics.jsonl (and config.json, results.json) of a python -m "
                    "fastadv.train run; plots the training loss (for PGD training the "
                    "saddle-point objective) and clean/robust accuracy per epoch. Writes "
                    "RUN/run.png and RUN/run.json, or OUT.png and OUT.json.")
    p.add_argument("run", metavar="RUN", help="the run directory (--out of the trainer)")
    p.add_argument("--out", help="output prefix (default: RUN/run)")
    output.add_overwrite_flag(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    result = run(args.run)  # first: a bad RUN is reported before anything is created
    json_path, png_path = output.output_paths(args.out or os.path.join(args.run, "run"),
                                              overwrite=args.overwrite)
    output.save_json(result, json_path)
    plot(result, png_path)
    t = result["loss_trend"]
    line = (f"{result['epochs_done']} epochs: {result['loss_name']} {t['first']:.4g} -> "
            f"{t['last']:.4g} (lowest {t['min']:.4g})")
    if t["decreasing_fraction"] is not None:
        line += f", decreased in {t['decreasing_fraction']:.0%} of epochs"
    print(line)
    print(f"wrote {json_path} and {png_path}")
    return 0
