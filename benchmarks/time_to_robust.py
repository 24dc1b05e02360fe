"""Time to robustness: test robust accuracy against wall-clock training seconds, for each of
fastadv's recipes and two plain PyTorch peers, at a few budgets of training time, over seeds.

    python -m benchmarks.time_to_robust                      # digits on the CPU: hours
    python -m benchmarks.time_to_robust --device cuda --dataset synthetic \\
        --synthetic-train 5000 --synthetic-test 500 --budgets 20,40 --seeds 1 --attack pgd
    python -m benchmarks.time_to_robust --device cuda --dataset synthetic --model small-cnn \\
        --width 4 --seeds 1 --budgets 2,5 --attack pgd --eval-steps 10 --eval-restarts 1 \\
        --entries madry,modern,n-fgsm,plain,plain-compile        # the GPU session's piece
    python -m benchmarks.time_to_robust --quick              # CI: madry and the plain loop

Entries (``--entries``, keys): ``madry``, ``rice``, ``wong-fast``, ``n-fgsm``,
``trades-awp``, ``modern`` (``fastadv.train`` with that recipe; the model kept is best.pt,
chosen by validation PGD accuracy: Rice et al.'s early stopping; with --ema the averaged
weights); ``madry-compile`` (the madry recipe with ``compile=True``); ``plain`` (a plain
PyTorch PGD-AT loop as common public code writes it: fp32, a uniform random start, each
step's input gradient from ``loss.backward()``, which also computes every weight gradient
(zeroed after), the step as eager kernels, the model in train mode during the attack
(fastadv attacks in eval mode, its default), data on the host, shuffled, the last partial
batch dropped); ``plain-compile`` (the same loop with ``torch.compile(model)`` for the attack
and the update and the step formula a compiled function: what a performance-minded user
writes today). The peers train the madry recipe's
model, optimizer, learning-rate schedule (per step), eps/alpha/steps, batch size and epochs
on the dataset, but on the WHOLE training set: fastadv holds a validation split out for
model selection, so the comparison favours the peers.

Budgets: for a budget of B seconds, each entry trains E = max(1, round(B / s)) epochs, where
s is its seconds per epoch measured once in a calibration run (two epochs, seed 0; s from the
second, so compilation is not in the rate; fastadv's from metrics.jsonl, which excludes
validation). The recipes with AWP calibrate a third epoch with the perturbation on (it starts
after ``awp_warmup`` epochs and costs one more forward and backward per step), and their E
counts both rates. So every entry completes its own schedule (learning rate decayed, early
stopping) in about B seconds, and the plot's x is the seconds each run actually trained:
fastadv's ``train_seconds`` (the epochs, without validation and checkpoints), the peers'
wall clock of the loop. Compilation is training time (a user pays it): each compiled run
starts from ``torch._dynamo.reset()`` (in-process caches cleared, as in a new process; the
on-disk Inductor cache stays warm, as on a user's second run).

Evaluation: robust accuracy on the whole test set (digits: 360 images; the split the run's
seed draws, which training never saw) under AutoAttack (``fastadv.eval.evaluate``), or
``--attack pgd`` (PGD-50, 10 restarts by default): cheaper, and the fallback when torchattacks
is missing (recorded). Clean accuracy too. The default CPU run (9 entries, 3 budgets, 3
seeds: 81 runs, each about its budget of training plus validation and ~30 s of AutoAttack on
2 cores) takes about two hours; ``--attack pgd``, fewer ``--seeds``, ``--budgets`` or
``--entries`` shorten it.

Runs go seed by seed, budget by budget, entry by entry (the compiled ones last), each entry
calibrated just before its first run. Output: one line per run as it ends; the JSON
(environment, calibration, every run, and per entry and budget the mean, min, max and std
over seeds), rewritten after every run (a run cut short keeps what it measured; on SIGTERM
the table and plot are written too, and the exit status is 143); a Markdown table per
budget (entries by mean robust accuracy, and whether the winner's lead exceeds the seed
spread); a PNG of robust accuracy against seconds (matplotlib; skipped with a note when it is
missing). Without ``--quick`` they go to
benchmarks/results/<device>-<date>-time-to-robust.{json,md,png}; ``--quick`` writes only the
paths given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fastadv.cli_common import number

from .common import environment

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SUITE = "time_to_robust"


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    kind: str  # fastadv, plain, plain-compile
    recipe: str = "madry"
    flags: dict = field(default_factory=dict)  # TrainConfig flags on top of the recipe


def entries() -> dict[str, Entry]:
    """Every entry, in the order they run within a budget: the compiled ones last (their
    cold compiles are the slowest, least telling part: a run cut short loses them first)."""
    from fastadv.train.recipes import RECIPES

    found = [Entry(name, f"fastadv {name}", "fastadv", name) for name in RECIPES]
    found += [Entry("plain", "plain PyTorch loop", "plain"),
              Entry("madry-compile", "fastadv pgd + compile", "fastadv", "madry",
                    {"compile": True}),
              Entry("plain-compile", "plain loop under torch.compile", "plain-compile")]
    return {e.key: e for e in found}


MADRY = Entry("madry", "fastadv madry", "fastadv", "madry")  # the peers' settings


# --------------------------------------------------------------------------- budgets


def epochs_for_budget(budget: float, rate: float, awp_rate: float | None = None,
                      awp_warmup: int = 0) -> int:
    """The epochs whose training takes closest to ``budget`` seconds (at least 1): ``rate``
    seconds per epoch, or, with ``awp_rate``, ``rate`` for the first ``awp_warmup`` epochs
    and ``awp_rate`` after."""
    if awp_rate is None or budget <= awp_warmup * rate:
        return max(1, round(budget / rate))
    return max(1, awp_warmup + round((budget - awp_warmup * rate) / awp_rate))


def calibration_epochs(calib: dict, budget: float) -> int:
    return epochs_for_budget(budget, calib["seconds_per_epoch"], calib.get("awp_seconds_per_epoch"),
                             calib.get("awp_warmup", 0))


# --------------------------------------------------------------------------- fastadv runs


def train_config(entry: Entry, dataset: str, *, epochs: int, seed: int, out: str, device,
                 size_flags: dict, **extra):
    from fastadv.train import TrainConfig

    return TrainConfig.for_dataset(dataset, recipe=entry.recipe, epochs=epochs, seed=seed,
                                   out=out, progress=False, device=str(device),
                                   **{**size_flags, **entry.flags, **extra})


def run_fastadv(entry: Entry, dataset: str, *, epochs: int, seed: int, device, size_flags: dict,
                **extra) -> tuple:
    """One fastadv.train run in a temporary folder: (its best.pt model, seconds of each
    epoch, train_seconds, best epoch)."""
    import fastadv
    from fastadv.train import train

    if entry.flags.get("compile"):
        torch._dynamo.reset()
    with tempfile.TemporaryDirectory(prefix="time-to-robust-") as tmp:
        cfg = train_config(entry, dataset, epochs=epochs, seed=seed,
                           out=os.path.join(tmp, "run"), device=device,
                           size_flags=size_flags, **extra)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                train(cfg)
        except BaseException:
            sys.stderr.write(log.getvalue()[-4000:])
            raise
        with open(os.path.join(cfg.out, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(cfg.out, "metrics.jsonl")) as f:
            history = [json.loads(line) for line in f if line.strip()]
        model = fastadv.load_model(os.path.join(cfg.out, "best.pt"), device)
    best = max((r for r in history if r.get("best")), key=lambda r: r["epoch"], default=None)
    return (model, [r["seconds"] for r in history], results["train_seconds"],
            None if best is None else best["epoch"])


# --------------------------------------------------------------------------- the peers


def pgd_step(x_adv, grad, x, eps: float, alpha: float):
    """The eager step of common public code: a signed step, projected, clipped."""
    return torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)


def plain_attack(model, x, y, *, eps, alpha, steps, step):
    """PGD-k from a uniform random start, in whatever mode the model is in (train here),
    each input gradient from loss.backward() (the weight gradients come too, zeroed after)."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = step(x_adv.detach(), x_adv.grad, x, eps, alpha)
    model.zero_grad(set_to_none=True)
    return x_adv.detach()


def run_plain(cfg, data, *, epochs: int, seed: int, device, compiled: bool) -> tuple:
    """The peer loop on the madry config ``cfg``'s model, optimizer, schedule and attack,
    over ``data``'s whole training set: (model, seconds of each epoch)."""
    from fastadv.data import random_crop_flip
    from fastadv.models import build_model
    from fastadv.train.schedule import scheduler

    c, h, w = data.shape
    torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=c, image_size=h,
                        mean=data.mean, std=data.std, width=cfg.width).to(device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = cfg.batch_size
    n = len(data.y_train) // batch * batch
    sched = scheduler(opt, cfg.schedule, epochs * (n // batch))
    step, net = pgd_step, model
    if compiled:
        torch._dynamo.reset()
        step, net = torch.compile(pgd_step, dynamic=False), torch.compile(model, dynamic=False)
    order_rng = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.y_train), generator=order_rng)
        for idx in order[:n].view(-1, batch):
            x = data.x_train[idx]
            x = (random_crop_flip(x) if data.augment else x).to(device)
            y = data.y_train[idx].to(device)
            x_adv = plain_attack(net, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                                 step=step)
            loss = F.cross_entropy(net(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return model.eval(), seconds


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- summary


def spread(values: list[float]) -> dict:
    """Mean, min, max and (sample) std of one quantity over seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per (entry, budget), in the order first measured: the spread over seeds of the robust
    and clean accuracy, training seconds and epochs (failed runs left out)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("robust_acc") is not None:
            groups.setdefault((r["entry"], r["budget"]), []).append(r)
    return [{"entry": entry, "label": rs[0]["label"], "budget": budget,
             "seeds": [r["seed"] for r in rs],
             **{k: spread([r[k] for r in rs])
                for k in ("robust_acc", "clean_acc", "train_seconds", "epochs")}}
            for (entry, budget), rs in groups.items()]


def winners(summary: list[dict]) -> list[dict]:
    """Per budget: the entry of the best mean robust accuracy, the runner-up, the lead, and
    whether the lead exceeds the seed spread (the winner's worst seed beats the runner-up's
    best; with a single seed there is no spread to judge by)."""
    found = []
    for budget in sorted({s["budget"] for s in summary}):
        ranked = ranked_at(summary, budget)
        first = ranked[0]
        row = {"budget": budget, "winner": first["entry"], "label": first["label"],
               "robust_acc": first["robust_acc"]["mean"], "second": None, "lead": None,
               "clear": None}
        if len(ranked) > 1:
            second = ranked[1]
            row.update(second=second["entry"], second_label=second["label"],
                       lead=first["robust_acc"]["mean"] - second["robust_acc"]["mean"])
            if min(first["robust_acc"]["n"], second["robust_acc"]["n"]) > 1:
                row["clear"] = first["robust_acc"]["min"] > second["robust_acc"]["max"]
        found.append(row)
    return found


def ranked_at(summary: list[dict], budget: float) -> list[dict]:
    return sorted((s for s in summary if s["budget"] == budget),
                  key=lambda s: -s["robust_acc"]["mean"])


def verdict(w: dict) -> str:
    text = (f"**{w['budget']:g} s: {w['label']}** wins with {w['robust_acc']:.1%} mean robust "
            "accuracy")
    if w["second"] is None:
        return text + " (the only entry)."
    text += f", {w['lead'] * 100:.1f} points ahead of {w['second_label']}"
    if w["clear"] is None:
        return text + "; one seed: no seed spread to judge the lead by."
    if w["clear"]:
        return text + "; beyond the seed spread (its worst seed beats the runner-up's best)."
    return text + "; within the seed spread (the min–max ranges overlap)."


def markdown(data: dict) -> str:
    s = data["settings"]
    lines = [f"Time to robustness on {data['device']}, {s['dataset']} (eps {s['eps']:.4g}), "
             f"torch {data['torch']}, {data['date'][:10]}", "",
             f"Test robust accuracy under {s['attack_desc']} on {s['test_examples']} test "
             f"images; {len(s['seeds'])} seed(s); epochs per entry sized to each budget from "
             "its calibrated seconds per epoch; seconds are measured training time (compile "
             "included)." + (f" {s['attack_note']}" if s.get("attack_note") else "")]
    summary = data["summary"]
    for budget in sorted({x["budget"] for x in summary}):
        lines += ["", f"### Budget {budget:g} s", "",
                  "| entry | epochs | seconds (mean) | robust acc: mean ± std (min–max) "
                  "| clean acc |",
                  "|---|---:|---:|---:|---:|"]
        for x in ranked_at(summary, budget):
            r, c, e = x["robust_acc"], x["clean_acc"], x["epochs"]
            epochs = (f"{e['min']:.0f}" if e["min"] == e["max"]
                      else f"{e['min']:.0f}–{e['max']:.0f}")
            robust = (f"{r['mean']:.1%} (1 seed)" if r["n"] == 1 else
                      f"{r['mean']:.1%} ± {r['std']:.1%} ({r['min']:.1%}–{r['max']:.1%})")
            lines.append(f"| {x['label']} | {epochs} | {x['train_seconds']['mean']:.1f} "
                         f"| {robust} | {c['mean']:.1%} |")
    if summary:
        lines += [""] + [verdict(w) for w in data["winners"]]
    failed = [r for r in data["runs"] if r.get("error")]
    for r in failed:
        lines.append(f"\nFailed: {r['label']}, seed {r['seed']}, budget {r['budget']:g} s: "
                     f"{r['error']}")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: str) -> str | None:
    """Robust accuracy against seconds, one line per entry (mean over seeds, the min–max as
    error bars); returns why it was skipped, or None."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    by_entry: dict[str, list[dict]] = {}
    for x in data["summary"]:
        by_entry.setdefault(x["label"], []).append(x)
    for label, points in by_entry.items():
        points.sort(key=lambda x: x["train_seconds"]["mean"])
        xs = [p["train_seconds"]["mean"] for p in points]
        r = [p["robust_acc"] for p in points]
        ax.errorbar(xs, [v["mean"] for v in r],
                    yerr=[[v["mean"] - v["min"] for v in r], [v["max"] - v["mean"] for v in r]],
                    marker="o", capsize=3, label=label)
    s = data["settings"]
    ax.set_xlabel("training seconds (measured; compile included)")
    ax.set_ylabel(f"test robust accuracy ({s['attack_desc']})")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlim(left=0)
    ax.set_title(f"Time to robustness: {s['dataset']}, eps {s['eps']:.4g}, {data['device']}, "
                 f"{len(s['seeds'])} seed(s) (mean, min–max)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_json(data: dict, path: str | None) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)  # a kill mid-write leaves the previous runs


# --------------------------------------------------------------------------- the benchmark


def evaluation(args) -> tuple[str, dict, str, str]:
    """(attack, evaluate's keywords, its description, a note): AutoAttack, or PGD when asked
    or when torchattacks is missing."""
    attack, note = args.attack, ""
    if attack == "autoattack" and importlib.util.find_spec("torchattacks") is None:
        attack, note = "pgd", "torchattacks is not installed: PGD instead of AutoAttack."
    if attack == "autoattack":
        return attack, {}, "AutoAttack (standard)", note
    desc = f"PGD-{args.eval_steps}, {args.eval_restarts} restart(s)"
    return attack, {"steps": args.eval_steps, "restarts": args.eval_restarts}, desc, note


class Benchmark:
    def __init__(self, args, device: torch.device):
        from fastadv.data import load_run_dataset

        self.args, self.device = args, device
        self.entries = [e for k, e in entries().items() if k in args.entries]
        self.size_flags = {k: v for k, v in (("width", args.width), ("model", args.model),
                                             ("eps", args.eps)) if v is not None}
        if args.dataset == "synthetic":
            self.size_flags.update(synthetic_train=args.synthetic_train,
                                   synthetic_test=args.synthetic_test)
        self.attack, self.eval_kwargs, attack_desc, note = evaluation(args)
        self._load = load_run_dataset
        self._data: dict[int, object] = {}
        madry = self.madry_config(epochs=1, seed=0)
        self.data = {
            "suite": SUITE, **environment(device, f"benchmarks.{SUITE}"), "finished": False,
            "settings": {"dataset": args.dataset, "device": str(device),
                         "seeds": list(range(args.seeds)),
                         "budgets": args.budgets, "entries": [e.key for e in self.entries],
                         "attack": self.attack, "attack_desc": attack_desc,
                         "attack_note": note, "eval_kwargs": self.eval_kwargs,
                         "eps": madry.eps, "flags": self.size_flags, "quick": args.quick,
                         "test_examples": len(self.dataset(0).y_test),
                         "peers": {k: getattr(madry, k) for k in (
                             "model", "width", "eps", "alpha", "steps", "batch_size",
                             "optimizer", "lr", "momentum", "weight_decay", "schedule")}},
            "calibration": {}, "runs": [], "summary": [], "winners": []}
        if note:
            print(f"note: {note}", flush=True)

    def madry_config(self, *, epochs: int, seed: int):
        return train_config(MADRY, self.args.dataset, epochs=epochs, seed=seed,
                            out=os.devnull, device=self.device, size_flags=self.size_flags)

    def dataset(self, seed: int):
        """The data a run of ``seed`` trains on (the digits split and synthetic images depend
        on it), loaded as the trainer loads it."""
        if seed not in self._data:
            self._data = {seed: self._load(self.madry_config(epochs=1, seed=seed).to_dict())}
        return self._data[seed]

    def train(self, entry: Entry, *, epochs: int, seed: int, **extra) -> tuple:
        """(model, seconds of each epoch, training seconds, best epoch)."""
        from fastadv.train import RunStopped

        if entry.kind == "fastadv":
            try:
                return run_fastadv(entry, self.args.dataset, epochs=epochs, seed=seed,
                                   device=self.device, size_flags=self.size_flags, **extra)
            except RunStopped:  # it took the SIGTERM at a batch boundary
                raise Stopped() from None
        model, seconds = run_plain(self.madry_config(epochs=epochs, seed=seed),
                                   self.dataset(seed), epochs=epochs, seed=seed,
                                   device=self.device, compiled=entry.kind == "plain-compile")
        return model, seconds, sum(seconds), None

    def calibrate(self, entry: Entry) -> dict:
        """Seconds per epoch from the second of two epochs (seed 0); with AWP, a third epoch
        with the perturbation on gives its rate."""
        cfg = (train_config(entry, self.args.dataset, epochs=2, seed=0, out=os.devnull,
                            device=self.device, size_flags=self.size_flags)
               if entry.kind == "fastadv" else None)
        awp = cfg is not None and cfg.awp is not None
        extra = {"awp_warmup": 2} if awp else {}
        _, seconds, _, _ = self.train(entry, epochs=3 if awp else 2, seed=0, **extra)
        calib = {"label": entry.label, "epoch_seconds": seconds, "seconds_per_epoch": seconds[1]}
        if awp:
            calib.update(awp_seconds_per_epoch=seconds[2], awp_warmup=cfg.awp_warmup)
        return calib

    def evaluate(self, model, seed: int) -> tuple[float, float]:
        from fastadv.eval import evaluate

        data = self.dataset(seed)
        eps = self.data["settings"]["eps"]
        with contextlib.redirect_stdout(io.StringIO()):
            report = evaluate(model, data.x_test.to(self.device), data.y_test.to(self.device),
                              eps=eps, attacks=(self.attack,), sanity_runs=False, curve=False,
                              progress=False, **self.eval_kwargs)
        return report.clean_acc, report.robust_acc

    def record(self, run: dict) -> None:
        self.data["runs"].append(run)
        self.data["summary"] = summarize(self.data["runs"])
        self.data["winners"] = winners(self.data["summary"])
        write_json(self.data, self.args.json)

    def run(self) -> dict:
        """Seed by seed, budget by budget, entry by entry; each entry calibrated just before
        its first run (a run cut short keeps whole entries)."""
        for seed in range(self.args.seeds):
            for budget in self.args.budgets:
                for entry in self.entries:
                    self.run_one(entry, seed, budget)
        self.data["finished"] = True
        write_json(self.data, self.args.json)
        return self.data

    def calibration(self, entry: Entry) -> dict:
        """The entry's calibration, measured on first use; a failed one is recorded (and
        raised again for each of the entry's runs, each then recorded as failed)."""
        calibration = self.data["calibration"]
        if entry.key not in calibration:
            try:
                calibration[entry.key] = calib = self.calibrate(entry)
            except Exception as exc:
                calibration[entry.key] = {"label": entry.label,
                                          "error": f"{type(exc).__name__}: {exc}"[:500]}
                write_json(self.data, self.args.json)
                raise
            rates = f"{calib['seconds_per_epoch']:.2f} s/epoch" + (
                f", {calib['awp_seconds_per_epoch']:.2f} with AWP"
                if "awp_seconds_per_epoch" in calib else "")
            print(f"calibrated {entry.label}: {rates} (epochs: "
                  + ", ".join(f"{s:.2f}" for s in calib["epoch_seconds"]) + " s)", flush=True)
            write_json(self.data, self.args.json)
        if "error" in calibration[entry.key]:
            raise RuntimeError(f"its calibration failed: {calibration[entry.key]['error']}")
        return calibration[entry.key]

    def run_one(self, entry: Entry, seed: int, budget: float) -> None:
        run = {"entry": entry.key, "label": entry.label, "seed": seed, "budget": budget,
               "epochs": None, "attack": self.attack}
        try:
            run["epochs"] = epochs = calibration_epochs(self.calibration(entry), budget)
            model, seconds, train_s, best = self.train(entry, epochs=epochs, seed=seed)
            t0 = time.perf_counter()
            clean, robust = self.evaluate(model, seed)
        except Exception as exc:  # one failed run (diverged, out of memory) costs only itself
            run.update(error=f"{type(exc).__name__}: {exc}"[:500], robust_acc=None)
            print(f"failed {entry.label} seed {seed} budget {budget:g} s: {run['error']}",
                  flush=True)
            self.record(run)
            return
        run.update(train_seconds=train_s, epoch_seconds=seconds, best_epoch=best,
                   clean_acc=clean, robust_acc=robust, eval_seconds=time.perf_counter() - t0)
        print(f"run {entry.label}, seed {seed}, budget {budget:g} s: {epochs} epochs in "
              f"{train_s:.1f} s, clean {clean:.1%}, robust {robust:.1%} ({self.attack})",
              flush=True)
        self.record(run)


def budgets_arg(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be > 0 seconds, got {text!r}")
    return sorted(set(values))


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.time_to_robust",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("digits", "synthetic"), default=None,
                        help="digits (default) or synthetic CIFAR-shaped images (for a GPU)")
    parser.add_argument("--synthetic-train", type=int, default=5000,
                        help="synthetic: training images (a validation split is held out)")
    parser.add_argument("--synthetic-test", type=int, default=500, help="synthetic: test images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--budgets", type=budgets_arg, default=None,
                        help="training seconds, comma-separated (default: 15,30,60 on a CPU, "
                             "30,60,120 on a GPU)")
    parser.add_argument("--entries", default=None,
                        help="comma-separated keys (default: all): " + ", ".join(entries()))
    parser.add_argument("--attack", choices=("autoattack", "pgd"), default=None,
                        help="evaluation attack (default autoattack; pgd without torchattacks)")
    parser.add_argument("--eval-steps", type=int, default=None, help="--attack pgd: steps (50)")
    parser.add_argument("--eval-restarts", type=int, default=None,
                        help="--attack pgd: restarts (10)")
    parser.add_argument("--eps", type=number, default=None,
                        help="l-inf radius, e.g. 8/255 (default: the dataset's)")
    parser.add_argument("--model", default=None, help="override the recipes' model")
    parser.add_argument("--width", type=int, default=None, help="override the small CNNs' width")
    parser.add_argument("--quick", action="store_true",
                        help="CI size: digits, width 1, 1 seed, a 2 s budget, PGD-5, madry and "
                             "the plain loop; writes only the paths given")
    parser.add_argument("--json", help="results JSON (rewritten after every run)")
    parser.add_argument("--md", help="Markdown tables")
    parser.add_argument("--plot", help="PNG of robust accuracy against seconds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick
    defaults = dict(dataset="digits", seeds=1 if quick else 3,
                    budgets=[2.0] if quick else [15.0, 30.0, 60.0] if device.type == "cpu"
                    else [30.0, 60.0, 120.0],
                    entries="madry,plain" if quick else ",".join(entries()),
                    attack="pgd" if quick else "autoattack",
                    eval_steps=5 if quick else 50, eval_restarts=1 if quick else 10,
                    width=1 if quick and args.model is None else None)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    unknown = [e for e in args.entries if e not in entries()]
    if unknown or not args.entries:
        parser.error(f"--entries: unknown {', '.join(unknown) or '(none given)'}; choose from "
                     + ", ".join(entries()))
    if args.seeds < 1 or args.eval_steps < 1 or args.eval_restarts < 1:
        parser.error("--seeds, --eval-steps and --eval-restarts must be >= 1")
    if not quick:
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()  # as "date"
        stem = os.path.join(RESULTS, f"{device.type}-{today}-time-to-robust")
        args.json = args.json or stem + ".json"
        args.md = args.md or stem + ".md"
        args.plot = args.plot or stem + ".png"
    return args, device


class Stopped(BaseException):
    """SIGTERM (a timeout's): the runs measured so far are written, the rest skipped."""


def _stop(signum, frame):
    raise Stopped()


def main(argv=None):
    args, device = parse(argv)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    signal.signal(signal.SIGTERM, _stop)
    bench = Benchmark(args, device)
    s = bench.data["settings"]
    print(f"time to robustness: {s['dataset']} on {bench.data['device']}, entries "
          f"{', '.join(s['entries'])}, budgets {', '.join(f'{b:g}' for b in args.budgets)} s, "
          f"{args.seeds} seed(s), {s['attack_desc']}", flush=True)
    try:
        data = bench.run()
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("stopped by SIGTERM: writing the runs measured so far", flush=True)
        data = bench.data
        data["stopped"] = "SIGTERM"
        write_json(data, args.json)
        write_outputs(data, args)
        sys.exit(128 + signal.SIGTERM)
    write_outputs(data, args)


def write_outputs(data: dict, args) -> None:
    """The Markdown (printed, and to --md) and the plot (--plot)."""
    text = markdown(data)
    print(text)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write(text)
    written = [p for p in (args.json, args.md) if p]
    if args.plot:
        skipped = plot(data, args.plot)
        if skipped:
            print(f"note: {skipped}")
        else:
            written.append(args.plot)
    if written:
        print(f"wrote {', '.join(written)}")


if __name__ == "__main__":
    main()
