"""benchmarks.gpu_session: the one-shot GPU session records every piece's outcome and keeps
going; its dry run (every piece on the CPU, tiny) completes, so the script cannot rot."""

import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_session
from benchmarks.gpu_session import Piece

PY = sys.executable


def test_time_left_is_shared_among_the_pieces_still_to_run():
    plan = [Piece("a", "", ["x"], 0.5, 1), Piece("b", "", None, 0.3, 1),
            Piece("c", "", ["x"], 0.25, 1), Piece("d", "", ["x"], 0.25, 1)]
    assert gpu_session.timeout_for(0, plan, 100) == pytest.approx(50)
    # Seconds that "a" did not use pass on to "c" and "d"; the skipped "b" takes none.
    assert gpu_session.timeout_for(2, plan, 90) == pytest.approx(45)


def test_a_timeout_ends_the_command_and_what_it_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            f"child = subprocess.Popen(['sleep', '60'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n")
    start = time.monotonic()
    _, timed_out = gpu_session.run_command([PY, "-c", code], str(tmp_path / "log"), dict(os.environ), 3)
    assert timed_out and time.monotonic() - start < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphan is reaped by init shortly
        try:
            with open(f"/proc/{child}/status") as f:
                if "State:\tZ" in f.read():
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the command's child outlived the timeout")


def test_each_outcome_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch):
    fake = [
        Piece("fails", "exits 3", [PY, "-c", "print('boom'); raise SystemExit(3)"], 0.2, 0),
        Piece("hangs", "sleeps", [PY, "-c", "import time; time.sleep(60)"], 0.1, 0),
        Piece("absent", "no tool", None, 0.2, 0, skip_reason="no such tool"),
        Piece("ok", "passes", [PY, "-c", "print('| a |'); print('|---|')"], 0.2, 0),
        Piece("starved", "needs more time than is left", [PY, "-c", "pass"], 0.01, 1000),
    ]
    monkeypatch.setattr(gpu_session, "pieces", lambda out, dry_run: fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # never reaches a piece
    gpu_session.session(str(tmp_path), 20, True, set(), ["--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_name = {p["name"]: p for p in summary["pieces"]}
    assert [p["name"] for p in summary["pieces"]] == [p.name for p in fake]
    assert by_name["fails"]["status"] == "failed" and "exit status 3: boom" in by_name["fails"]["reason"]
    assert by_name["hangs"]["status"] == "failed" and "timed out" in by_name["hangs"]["reason"]
    assert by_name["absent"] == {**by_name["absent"], "status": "skipped", "reason": "no such tool"}
    assert by_name["ok"]["status"] == "ok" and by_name["ok"]["outputs"] == {"log": "ok.log"}
    assert by_name["starved"]["status"] == "skipped" and "budget" in by_name["starved"]["reason"]
    assert summary["finished"] and summary["ignored_TRITON_INTERPRET"] == "1"
    assert "| ok | ok |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_dry_run_completes(tmp_path):
    """The whole session on the CPU at tiny sizes (also CI's rehearsal of the GPU session)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTADV_BACKEND", "TRITON_INTERPRET")}
    result = subprocess.run([PY, "-m", "benchmarks.gpu_session", "--dry-run", "--out", str(tmp_path)],
                            cwd=gpu_session.ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {p["name"]: p["status"] for p in summary["pieces"]}
    assert status == {"build": "skipped", "info": "ok", "tests": "ok", "memcheck": "skipped",
                      "op": "ok", "op-bf16": "ok", "attack": "ok", "train-epoch": "ok",
                      "train-bench": "ok"}
    assert summary["dry_run"] and summary["finished"] and summary["total_s"] < 600
    for key in ("device", "torch", "triton", "date", "git_sha", "command"):
        assert key in summary
    for piece in summary["pieces"]:
        for name in piece["outputs"].values():
            assert (tmp_path / name).exists(), name
    by_name = {p["name"]: p for p in summary["pieces"]}
    assert by_name["tests"]["highlights"]["passed"] > 0
    assert by_name["train-epoch"]["highlights"]["epoch_seconds"]
    assert "## attack" in (tmp_path / "summary.md").read_text()


def test_the_gpu_commands_parse(tmp_path, monkeypatch):
    """The full-size commands, which only a GPU runs, still match the CLIs they call."""
    from benchmarks import attack, op, train
    from fastadv.train import config

    plan = {p.name: p for p in gpu_session.pieces(str(tmp_path), dry_run=False)}
    command = plan["train-epoch"].command
    cfg = config.resolve(config.parser().parse_args(command[command.index("fastadv.train") + 1:]))
    assert (cfg.synthetic_train - cfg.val_size, cfg.model, cfg.steps) == (50_000, "preact-resnet18", 10)
    assert cfg.cuda_graph and cfg.device == "cuda"

    calls = {}
    suites = {"op": op, "op-bf16": op, "attack": attack, "train-bench": train}
    for name, module in suites.items():
        monkeypatch.setattr(module, "run", lambda *a, _name=name, **k: calls.setdefault(_name, k) and [])
        monkeypatch.setattr(module, "report", lambda *a, **k: None)
        if hasattr(module, "call_overhead"):  # times real calls on the (absent) GPU
            monkeypatch.setattr(module, "call_overhead", lambda *a, **k: [])
        monkeypatch.setattr(module, "device_name", lambda device: "a GPU", raising=False)
        command = plan[name].command
        module.main(command[command.index("-m") + 2:])
    assert set(calls) == set(suites)
    assert {k: calls["attack"][k] for k in ("model_name", "batch", "steps", "eval_restarts")} == \
        {"model_name": "preact-resnet18", "batch": 512, "steps": 10, "eval_restarts": 0}
    assert {k: calls["train-bench"][k] for k in ("model_name", "images", "batch", "steps")} == \
        {"model_name": "preact-resnet18", "images": 5120, "batch": 512, "steps": 10}
