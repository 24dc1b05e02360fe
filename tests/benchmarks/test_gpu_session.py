"""benchmarks.gpu_session: the one-shot GPU session records every piece's outcome and keeps
going; its dry run (every piece on the CPU, tiny) completes, so the script cannot rot."""

import json
import os
import subprocess
import sys
import tarfile
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
    monkeypatch.setattr(gpu_session, "pieces", lambda out, dry_run, wheel_dir=None: fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # never reaches a piece
    archive = tmp_path.parent / f"{tmp_path.name}.tar.gz"
    gpu_session.session(str(tmp_path), 20, True, set(), ["--out", str(tmp_path)],
                        archive=str(archive))
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
    with tarfile.open(archive) as tar:  # the whole --out, as of the end
        names = tar.getnames()
        packed = json.load(tar.extractfile(f"{tmp_path.name}/summary.json"))
    assert f"{tmp_path.name}/fails.log" in names and packed["finished"]


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
    assert status == {"wheels": "skipped", "build": "skipped", "info": "ok", "tests": "ok",
                      "op": "ok", "attack": "ok", "train-epoch": "ok", "train-bench": "ok",
                      "time-to-robust": "ok", "memcheck": "skipped", "op-bf16": "ok"}
    # The plan comes first, before any piece runs.
    assert result.stdout.index("plan:") < result.stdout.index("[1/11] wheels")
    assert set(summary["plan_s"]) == set(status) - {"wheels", "build", "memcheck"}
    assert summary["dry_run"] and summary["finished"] and summary["total_s"] < 600
    for key in ("device", "torch", "triton", "date", "git_sha", "command"):
        assert key in summary
    for piece in summary["pieces"]:
        for name in piece["outputs"].values():
            assert (tmp_path / name).exists(), name
    by_name = {p["name"]: p for p in summary["pieces"]}
    assert by_name["tests"]["highlights"]["passed"] > 0
    assert by_name["train-epoch"]["highlights"]["epoch_seconds"]
    assert by_name["attack"]["highlights"]["rows"] > 0
    assert "## attack" in (tmp_path / "summary.md").read_text()
    # Nothing large comes back: the run's checkpoints are discarded, its metrics kept.
    assert not list((tmp_path / "train-epoch").glob("*.pt"))
    assert (tmp_path / "train-epoch" / "metrics.jsonl").exists()
    sizes = [f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()]
    assert max(sizes) <= gpu_session.MAX_OUTPUT_BYTES


class _NoReport:
    def __init__(self, *args, **kwargs):
        pass

    def add(self, row):
        pass

    def finish(self, rows=None):
        pass


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
        for name_, stub in (("report", lambda *a, **k: None), ("Report", _NoReport)):
            if hasattr(module, name_):
                monkeypatch.setattr(module, name_, stub)
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


def test_the_default_budget_fits_a_600_s_command_and_every_piece_its_minimum(tmp_path):
    budget = gpu_session.DEFAULT_BUDGET_S
    assert budget + 45 <= 600  # Python's start, the outputs' copy and a margin stay outside
    plan = gpu_session.pieces(str(tmp_path), dry_run=False, wheel_dir=str(tmp_path))
    planned = gpu_session.planned_timeouts(plan, budget)
    assert sum(planned.values()) + gpu_session.reserve_s(budget) == pytest.approx(budget)
    for piece in plan:  # even if every earlier piece used all of its share
        if piece.command is not None:
            assert planned[piece.name] >= piece.min_s, piece.name


def test_pieces_come_in_the_order_of_their_value(tmp_path):
    names = [p.name for p in gpu_session.pieces(str(tmp_path), dry_run=False)]
    assert names == ["wheels", "build", "info", "tests", "op", "attack", "train-epoch",
                     "train-bench", "time-to-robust", "memcheck", "op-bf16"]


def test_the_build_reaches_for_no_network_and_targets_this_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_session, "gpu_arch", lambda: "9.0")
    build = {p.name: p for p in gpu_session.pieces(str(tmp_path), dry_run=False)}["build"]
    assert "--no-index" in build.command and "--no-deps" in build.command
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["FASTADV_BUILD_CUDA"] == "1"


def test_a_dry_run_builds_the_cpu_kernels_only_where_none_are_built(tmp_path, monkeypatch):
    for built, expect_command in ((True, False), (False, True)):
        monkeypatch.setattr(gpu_session, "built_extension", lambda built=built: built)
        build = {p.name: p for p in gpu_session.pieces(str(tmp_path), dry_run=True)}["build"]
        assert (build.command is not None) == expect_command
        assert build.env["FASTADV_BUILD_CUDA"] == "0"


def test_outputs_stay_small(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"x" * 1000)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    big_log = b"head\n" + b"." * (gpu_session.MAX_OUTPUT_BYTES * 2) + b"\nlast line\n"
    (tmp_path / "tests.log").write_bytes(big_log)
    (tmp_path / "huge.bin").write_bytes(b"\0" * (gpu_session.MAX_OUTPUT_BYTES + 1))
    (tmp_path / "small.json").write_text("{}")
    changed = gpu_session.discard_and_trim(str(tmp_path), ["run/*.pt"])
    assert not (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "metrics.jsonl").exists()
    log = (tmp_path / "tests.log").read_bytes()
    assert log.startswith(b"head\n") and log.endswith(b"last line\n") and b"bytes cut" in log
    assert len(log) <= gpu_session.MAX_OUTPUT_BYTES
    assert not (tmp_path / "huge.bin").exists() and (tmp_path / "small.json").exists()
    assert len(changed) == 3 and any("last.pt: discarded" in c for c in changed)


def test_a_precheck_note_is_recorded(tmp_path):
    piece = Piece("p", "", [PY, "-c", "pass"], 1, 0, precheck=lambda env: "no baseline here")
    result = gpu_session.run_piece(piece, str(tmp_path), 30, "")
    assert result.status == "ok" and result.note == "no baseline here"


def test_the_wheels_flag_needs_a_bundle(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_session.main(["--dry-run", "--out", str(tmp_path / "o"), "--wheels", str(tmp_path)])
    assert exc.value.code == 2 and "no manifest.json" in capsys.readouterr().err


def test_suite_rows_are_written_as_they_are_measured(tmp_path, capsys):
    """A suite cut short by its timeout keeps every row it measured, in its JSON."""
    from dataclasses import dataclass

    import torch

    from benchmarks.common import Report

    @dataclass
    class Row:
        impl: str
        images_per_s: float

    def markdown(rows, env):
        return "\n".join(["title", "", "| impl | images/s |", "|---|---:|",
                          *[f"| {r.impl} | {r.images_per_s} |" for r in rows]])

    path = tmp_path / "suite.json"
    report = Report("x", torch.device("cpu"), markdown, str(path))
    report.add(Row("eager", 1.0))
    data = json.loads(path.read_text())
    assert data["finished"] is False and data["rows"] == [{"impl": "eager", "images_per_s": 1.0}]
    assert capsys.readouterr().out == "measured | eager | 1.0 |\n"  # not a table line
    report.add(Row("fused", 2.0))
    report.finish()
    data = json.loads(path.read_text())
    assert data["finished"] is True and [r["impl"] for r in data["rows"]] == ["eager", "fused"]
    assert "| fused | 2.0 |" in capsys.readouterr().out


def test_pieces_find_this_pythons_scripts_first(monkeypatch):
    """The build finds the ninja the wheels installed even when PATH lacks the venv's bin/."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = gpu_session.child_env(Piece("p", "", ["x"], 1, 0))
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["PATH"].endswith("/usr/bin:/bin")


def test_the_wheels_piece_says_what_it_installed(tmp_path):
    log = ("keep    numpy 2.5.2 (installed; bundle has 2.5.5)\n"
           "install torchattacks 3.5.1\ninstall tqdm 4.70.1 (replaces 4.0: outside >=4.56.1)\n"
           "missing torchvision: neither bundled nor installed (torchattacks: torchvision>=0.8.2)\n")
    found = gpu_session.highlights(Piece("wheels", "", ["x"], 1, 0), str(tmp_path), log)
    assert found == {"installed": ["torchattacks 3.5.1", "tqdm 4.70.1"], "kept": 1,
                     "missing": ["torchvision"]}
