"""benchmarks.time_to_robust: robust accuracy against training seconds, fastadv's recipes
against plain PyTorch loops; the --quick run completes with every output, and the summary
names the winner only as clearly as the seeds allow."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_session, time_to_robust as ttr

PY = sys.executable
ROOT = gpu_session.ROOT


def env():
    return {k: v for k, v in os.environ.items() if k not in ("FASTADV_BACKEND", "TRITON_INTERPRET")}


def test_quick_run_writes_every_output(tmp_path):
    paths = {k: str(tmp_path / f"ttr.{k}") for k in ("json", "md", "png")}
    start = time.monotonic()
    done = subprocess.run([PY, "-m", "benchmarks.time_to_robust", "--quick", "--json",
                           paths["json"], "--md", paths["md"], "--plot", paths["png"]],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 120
    data = json.loads(open(paths["json"]).read())
    assert data["suite"] == "time_to_robust" and data["finished"]
    for key in ("device", "device_type", "torch", "date", "git_sha", "command"):
        assert key in data
    assert data["device_type"] == "cpu" and data["settings"]["attack"] == "pgd"
    assert set(data["calibration"]) == {"madry", "plain"}
    assert all(c["seconds_per_epoch"] > 0 for c in data["calibration"].values())
    assert {r["entry"] for r in data["runs"]} == {"madry", "plain"}  # fastadv and the peer
    for run in data["runs"]:
        assert 0 <= run["robust_acc"] <= 1 and 0 <= run["clean_acc"] <= 1
        assert run["epochs"] >= 1 and run["train_seconds"] > 0 and run["attack"] == "pgd"
        assert (run["seed"], run["budget"]) == (0, 2.0)
    assert len(data["summary"]) == 2
    for row in data["summary"]:
        for key in ("robust_acc", "clean_acc", "train_seconds"):
            assert {"mean", "min", "max", "std"} <= set(row[key])
        assert row["robust_acc"]["min"] <= row["robust_acc"]["mean"] <= row["robust_acc"]["max"]
    assert data["winners"][0]["winner"] in {"madry", "plain"}
    md = open(paths["md"]).read()
    assert "### Budget 2 s" in md and "fastadv madry" in md and "plain PyTorch loop" in md
    assert "run fastadv madry, seed 0" in done.stdout
    if importlib.util.find_spec("matplotlib"):
        assert os.path.getsize(paths["png"]) > 0


def test_sigterm_keeps_the_runs_measured(tmp_path):
    """A timeout's SIGTERM mid-training: the runs before it are written, with the table."""
    out = tmp_path / "ttr.json"
    proc = subprocess.Popen([PY, "-m", "benchmarks.time_to_robust", "--quick", "--entries",
                             "madry", "--budgets", "2,600", "--json", str(out), "--md",
                             str(tmp_path / "ttr.md")],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("run "):
                break
        time.sleep(1)  # inside the 600 s budget's training
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, rest
    data = json.loads(out.read_text())
    assert data["stopped"] == "SIGTERM" and not data["finished"]
    assert [r["budget"] for r in data["runs"]] == [2.0]
    assert "### Budget 2 s" in (tmp_path / "ttr.md").read_text()


def _run(entry, budget, seed, robust, seconds=1.0):
    return {"entry": entry, "label": entry.upper(), "seed": seed, "budget": budget,
            "epochs": 3, "train_seconds": seconds, "clean_acc": 0.9, "robust_acc": robust,
            "attack": "pgd"}


def test_summary_and_winner_against_the_seed_spread(tmp_path):
    runs = [_run("a", 10, s, v) for s, v in enumerate((0.50, 0.52, 0.54))]
    runs += [_run("b", 10, s, v) for s, v in enumerate((0.40, 0.42, 0.41))]
    runs += [_run("a", 20, s, v) for s, v in enumerate((0.50, 0.60))]
    runs += [_run("b", 20, s, v) for s, v in enumerate((0.55, 0.58))]
    runs += [_run("c", 20, 0, 0.99)]  # a single seed
    runs += [{**_run("a", 30, 0, None), "error": "TrainingDiverged: nan"},
             _run("b", 30, 0, 0.3)]
    summary = ttr.summarize(runs)
    got = {(s["entry"], s["budget"]): s for s in summary}
    assert set(got) == {("a", 10), ("b", 10), ("a", 20), ("b", 20), ("c", 20), ("b", 30)}
    a10 = got["a", 10]["robust_acc"]
    assert a10["mean"] == pytest.approx(0.52) and (a10["min"], a10["max"]) == (0.50, 0.54)
    assert a10["std"] == pytest.approx(0.02) and a10["n"] == 3
    assert got["c", 20]["robust_acc"]["std"] == 0.0
    wins = {w["budget"]: w for w in ttr.winners(summary)}
    # 10 s: a's worst seed (0.50) beats b's best (0.42).
    assert (wins[10]["winner"], wins[10]["second"], wins[10]["clear"]) == ("a", "b", True)
    assert wins[10]["lead"] == pytest.approx(0.11)
    # 20 s: c wins on one seed (no spread to judge by); a and b would overlap.
    assert (wins[20]["winner"], wins[20]["second"], wins[20]["clear"]) == ("c", "b", None)
    # 30 s: a failed, b stands alone.
    assert (wins[30]["winner"], wins[30]["second"]) == ("b", None)
    text = ttr.markdown({"device": "cpu", "torch": "2", "date": "2026-01-01", "runs": runs,
                         "summary": summary, "winners": ttr.winners(summary),
                         "settings": {"dataset": "digits", "eps": 0.2, "attack_desc": "PGD",
                                      "test_examples": 360, "seeds": [0, 1, 2]}})
    assert "beyond the seed spread" in text and "no seed spread" in text
    assert "the only entry" in text and "Failed: A, seed 0, budget 30 s" in text
    table_10 = text.split("### Budget 10 s")[1].split("###")[0]
    assert table_10.index("| A |") < table_10.index("| B |")  # by mean robust accuracy
    b20 = [x for x in summary if (x["entry"], x["budget"]) == ("b", 20)]
    a20 = [x for x in summary if (x["entry"], x["budget"]) == ("a", 20)]
    assert ttr.winners(b20 + a20)[0]["clear"] is False  # 0.565 vs 0.55, ranges overlap
    assert "within the seed spread" in ttr.verdict(ttr.winners(b20 + a20)[0])
    if importlib.util.find_spec("matplotlib"):  # one line per entry, min-max bars
        data = {"device": "cpu", "summary": summary,
                "settings": {"dataset": "digits", "eps": 0.2, "attack_desc": "PGD",
                             "seeds": [0, 1, 2]}}
        assert ttr.plot(data, str(tmp_path / "plot.png")) is None
        assert (tmp_path / "plot.png").stat().st_size > 0


def test_epochs_fill_the_budget():
    assert ttr.epochs_for_budget(15, 2.0) == 8  # round(7.5)
    assert ttr.epochs_for_budget(0.5, 2.0) == 1  # at least one
    # AWP after 10 epochs of 1 s, 2 s each after: 10 + (30 - 10) / 2.
    assert ttr.epochs_for_budget(30, 1.0, 2.0, 10) == 20
    assert ttr.epochs_for_budget(6, 1.0, 2.0, 10) == 6  # never reaches the AWP epochs


def test_the_gpu_piece_parses():
    """The GPU session's full-size command (only a GPU runs it) matches this CLI."""
    piece = {p.name: p for p in gpu_session.pieces("/tmp/out", dry_run=False)}["time-to-robust"]
    command = piece.command
    args, device = ttr.parse(command[command.index("benchmarks.time_to_robust") + 1:])
    assert device.type == "cuda" and args.dataset == "synthetic" and args.seeds == 1
    assert args.entries == ["madry", "modern", "n-fgsm", "plain", "plain-compile"]
    assert args.attack == "pgd" and args.json.endswith("time-to-robust.json")
    dry = {p.name: p for p in gpu_session.pieces("/tmp/out", dry_run=True)}["time-to-robust"]
    assert "--quick" in dry.command


def test_a_failed_calibration_or_run_costs_only_its_entry(monkeypatch):
    args, device = ttr.parse(["--quick", "--entries", "madry,plain", "--budgets", "1,2"])
    bench = ttr.Benchmark(args, device)

    def train(entry, *, epochs, seed, **extra):
        if entry.key == "madry":
            raise RuntimeError("boom")
        return None, [0.5] * epochs, 0.5 * epochs, None

    monkeypatch.setattr(bench, "train", train)
    monkeypatch.setattr(bench, "evaluate", lambda model, seed: (0.9, 0.4))
    data = bench.run()
    assert data["finished"] and data["calibration"]["madry"]["error"] == "RuntimeError: boom"
    assert data["calibration"]["plain"]["seconds_per_epoch"] == 0.5
    by = {(r["entry"], r["budget"]): r for r in data["runs"]}
    assert "boom" in by["madry", 1.0]["error"] and "calibration" in by["madry", 2.0]["error"]
    assert [by["plain", b]["epochs"] for b in (1.0, 2.0)] == [2, 4]
    assert [(w["winner"], w["second"]) for w in data["winners"]] == [("plain", None)] * 2
