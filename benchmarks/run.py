"""One entry point for every benchmark suite: each against its baselines measured in the
same run, written together as benchmarks/results/<device>-<date>.{json,md,png}.

    python -m benchmarks.run --suite all --device cuda            # the full suite on a GPU
    python -m benchmarks.run --suite all --device cpu --quick     # under 2 minutes (CI)

A long GPU run can go in pieces (one model or suite per command) and be merged into one report:

    python -m benchmarks.run --suite op --out /tmp/op
    python -m benchmarks.run --suite attack --model preact-resnet18 --out /tmp/attack-prn18
    python -m benchmarks.run --merge /tmp/op.json /tmp/attack-prn18.json ...

Suites: ``op`` (pgd_ GB/s against a tensor copy and the eager formula), ``attack`` (PGD-10
and PGD-50 x 10 evaluation images/s against torchattacks and an eager loop, with the ablation
and the robust accuracy of each row), ``train`` (PGD-10 AT images/s against a plain eager
training loop, with the ablation), ``loading`` (PGD-10 AT images/s of ``fastadv.fit`` with
the data streamed through its DataLoader, PNG decode in workers, against the same data in
memory). Each suite's own module runs it alone too (``python -m benchmarks.attack ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict

import torch

from . import attack, loading, op, train
from .common import device_name, environment

SUITES = ("op", "attack", "train", "loading")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run_suite(suite: str, device: torch.device, quick: bool, models=None) -> list:
    if suite == "op":
        shapes = op.QUICK_SHAPES if quick else tuple(op.SHAPES)
        return (op.run(device, shapes, repeats=5 if quick else 30)
                + op.call_overhead(device, number=500 if quick else 2000,
                                   repeats=5 if quick else 15))
    module = {"attack": attack, "train": train, "loading": loading}[suite]
    name = device_name(device)
    return [row for case in module.cases(device, quick)
            if not models or case["model_name"] in models
            for row in module.run(device, **case, device_name=name)]


ROWS = {"op": op.Row, "attack": attack.Row, "train": train.Row, "loading": loading.Row}
# What makes a row unique within its suite.
ROW_KEYS = {"op": ("shape", "dtype", "impl"),
            "attack": ("model", "batch", "steps", "restarts", "impl"),
            "train": ("model", "images", "batch", "steps", "impl"),
            "loading": ("model", "images", "batch", "steps", "workers", "impl")}


def merge(paths: list[str]) -> tuple[dict, dict]:
    """(env, {suite: rows}) of earlier results files of ``benchmarks.run``, concatenated in
    the order given. They must come from one device, torch, commit and mode (quick or full),
    and no row may appear twice (run the pieces with --suite / --model)."""
    envs, results, origin = [], {}, {}
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--merge: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or "suites" not in data:
            raise SystemExit(f"--merge: {path} is not a results file of benchmarks.run")
        envs.append(data)
        for suite, rows in data["suites"].items():
            for r in rows:
                try:
                    row = ROWS[suite](**r)
                except (KeyError, TypeError) as exc:
                    raise SystemExit(f"--merge: {path}: a {suite} row this version cannot "
                                     f"read (written by another version?): {exc}") from None
                key = (suite, *(r[k] for k in ROW_KEYS[suite]))
                if key in origin:
                    raise SystemExit(f"--merge: the {suite} row {key[1:]} is in both "
                                     f"{origin[key]} and {path}; run the pieces with --suite "
                                     "and --model so that each row is measured once")
                origin[key] = path
                results.setdefault(suite, []).append(row)
    for key in ("device", "device_type", "torch", "git_sha", "quick"):
        values = {str(e.get(key)) for e in envs}
        if len(values) > 1:
            raise SystemExit(f"--merge: the files differ in {key} ({', '.join(sorted(values))})"
                             "; merge only pieces of one run")
    env = {k: v for k, v in envs[0].items() if k not in ("suites", "merged_from")}
    env["command"] = [c for e in envs
                      for c in (e["command"] if isinstance(e["command"], list) else [e["command"]])]
    env["merged_from"] = [os.path.basename(p) for p in paths]
    return env, results


MARKDOWN = {"op": op.markdown, "attack": attack.markdown, "train": train.markdown,
            "loading": loading.markdown}


def speedups(suite: str, rows: list) -> list[tuple[str, float]]:
    """(label, speed-up over the suite's baseline) for the chart."""
    if suite == "op":
        return [(f"{r.shape} {r.impl}", r.speedup_vs_eager) for r in rows if r.impl != "eager"]
    if suite == "attack":
        return [(f"{r.model} PGD-{r.steps}" + (f"x{r.restarts}" if r.restarts > 1 else "")
                 + f" {r.impl}", r.speedup_vs_torchattacks) for r in rows
                if r.speedup_vs_torchattacks is not None]
    if suite == "loading":
        return [(f"{r.model} {r.impl}", r.ratio_vs_in_memory) for r in rows
                if r.impl != loading.IN_MEMORY]
    return [(f"{r.model} {r.impl}", r.speedup_vs_plain) for r in rows]


def chart(results: dict, env: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    suites = [s for s in SUITES if s in results]
    # Parenthesised details stay in the tables; the chart keeps its labels short.
    bars = {s: [(re.sub(r" \(.*\)", "", label), v) for label, v in speedups(s, results[s])]
            for s in suites}
    heights = [max(2.0, 0.28 * len(bars[s]) + 1) for s in suites]
    fig, axes = plt.subplots(len(suites), 1, figsize=(11.5, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    baseline = {"op": "eager formula", "attack": "torchattacks.PGD", "train": "plain eager loop",
                "loading": "the same data in memory"}
    for ax, suite in zip(axes[:, 0], suites):
        labels, values = zip(*bars[suite]) if bars[suite] else ((), ())
        ax.barh(range(len(values)), values, color="tab:blue")
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel(f"speed-up over {baseline[suite]} (same run; log scale)")
        ax.set_title(f"{suite} suite", fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}×", va="center", fontsize=7)
    fig.suptitle(f"fastadv benchmarks on {env['device']}, torch {env['torch']}, "
                 f"{env['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small cases (CI, < 2 min on CPU)")
    parser.add_argument("--model", action="append", choices=attack.MODELS,
                        help="only this model's attack and train cases (repeatable)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="write one report from earlier results files (no benchmarking)")
    parser.add_argument("--out", help="path prefix of the .json/.md/.png (default: "
                                      "benchmarks/results/<device>-<date>[-quick])")
    args = parser.parse_args(argv)
    if args.merge and (args.suite != "all" or args.model or args.quick):
        parser.error("--merge takes the suites, models and mode of its files: drop --suite, "
                     "--model and --quick")
    if args.merge:
        env, results = merge(args.merge)
        device_type = env["device_type"]
        for suite, rows in results.items():
            print(MARKDOWN[suite](rows, env), "\n", flush=True)
        quick = env.pop("quick", False)
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        suites = SUITES if args.suite == "all" else (args.suite,)
        env = environment(device, "benchmarks.run")
        results = {}
        for suite in suites:
            results[suite] = run_suite(suite, device, args.quick, args.model)
            print(MARKDOWN[suite](results[suite], env), "\n", flush=True)
        device_type, quick = device.type, args.quick
    date = env["date"][:10]
    prefix = args.out or os.path.join(
        RESULTS, f"{device_type}-{date}" + ("-quick" if quick else ""))
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump({**env, "quick": quick,
                   "suites": {s: [asdict(r) for r in rows] for s, rows in results.items()}},
                  f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write("\n\n".join(MARKDOWN[s](rows, env) for s, rows in results.items()) + "\n")
    chart(results, env, prefix + ".png")
    print(f"wrote {prefix}.json, .md and .png")


if __name__ == "__main__":
    main()
