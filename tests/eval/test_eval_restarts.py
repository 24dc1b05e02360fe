"""python -m fastadv.eval run again by a scheduler or torchrun: --resume auto continues a
killed evaluation, or finds its report complete, and never replaces a report that is not this
evaluation's; several torchrun processes are refused before anything is written; a restarted
worker resumes by itself, and one of an --overwrite command continues the partial file its
own job wrote (an older one is discarded); a real torchrun job whose worker is SIGKILLed ends
with the uninterrupted report."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastadv.eval import store
from fastadv.eval.cli import main
from helpers import same_report, torch_threads, trained_checkpoint

# Tiny budgets: the behaviour of the command is the point, in seconds on two CPU cores.
EVAL = ["--n-examples", "64", "--batch-size", "8", "--attacks", "fgsm,pgd", "--steps", "5",
        "--restarts", "2", "--sanity-examples", "32", "--curve-steps", "4", "--no-progress"]
ELASTIC_ENV = ("WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")
JOB = "job-1"  # the torchrun run id the killed evaluation's partial file records


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread):
    return trained_checkpoint(tmp_path_factory.mktemp("restarts"), epochs=1)


@pytest.fixture(scope="module")
def args(checkpoint):
    return ["--checkpoint", checkpoint, *EVAL]


@pytest.fixture(scope="module")
def whole(args, tmp_path_factory):
    """The report of an uninterrupted evaluation."""
    path = str(tmp_path_factory.mktemp("whole") / "whole.json")
    assert main([*args, "--json", path]) == 0
    return path


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "FASTADV_BACKEND" and k not in ELASTIC_ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def wait_for(path: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)


@pytest.fixture(scope="module")
def killed(args, tmp_path_factory):
    """The partial file of an evaluation (torchrun job JOB) SIGKILLed once it existed."""
    folder = tmp_path_factory.mktemp("killed")
    partial = str(folder / "r.json.partial")
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.eval", *args, "--json",
                             str(folder / "r.json")], env=subprocess_env(TORCHELASTIC_RUN_ID=JOB),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(partial, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the kill should land mid-run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert not os.path.exists(folder / "r.json")
    assert store.recorded_run_id(partial) == JOB
    return partial


def done_units(partial: str) -> set:
    return set(torch.load(partial, weights_only=True)["units"])


def with_partial(killed: str, tmp_path) -> str:
    """OUT.json (not there yet) beside a copy of the killed evaluation's partial file."""
    out = str(tmp_path / "r.json")
    shutil.copy(killed, out + ".partial")
    return out


@pytest.fixture
def units_computed(monkeypatch):
    """The keys of the units this test's evaluations computed (rather than found stored)."""
    keys = []
    put = store.Store.put

    def counting_put(self, key, value):
        keys.append(key)
        put(self, key, value)

    monkeypatch.setattr(store.Store, "put", counting_put)
    return keys


# --------------------------------------------------------------------------- --resume auto


def test_resume_takes_only_auto_as_a_value(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--json", str(tmp_path / "r.json"), "--resume", "bad"])
    assert exc.value.code == 2
    assert "argument --resume: the only value --resume takes is auto" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--json", str(tmp_path / "r.json"), "--resume", "auto", "--overwrite"])
    assert exc.value.code == 2
    assert "pass one of them" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_resume_auto_starts_when_there_is_nothing_and_then_finds_it_complete(args, whole,
                                                                             tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert main([*args, "--json", out, "--resume", "auto"]) == 0
    assert "resuming" not in capsys.readouterr().err
    same_report(whole, out)
    before = open(out).read()
    # Run again (a scheduler's requeue after the report was written): nothing is redone.
    assert main([*args, "--json", out, "--resume", "auto"]) == 0
    assert capsys.readouterr().out.strip() == f"already complete: {out}"
    assert open(out).read() == before
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_resume_auto_continues_a_killed_evaluation(args, whole, killed, tmp_path, capsys,
                                                   units_computed):
    out = with_partial(killed, tmp_path)
    assert main([*args, "--json", out, "--resume", "auto"]) == 0
    assert f"resuming the evaluation kept in {out}.partial" in capsys.readouterr().err
    assert units_computed and done_units(killed).isdisjoint(units_computed)
    same_report(whole, out)
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


@pytest.mark.parametrize("case", ["other-settings", "not-a-report", "plot-missing"])
def test_resume_auto_never_replaces_a_report_that_is_not_this_evaluation(case, args, whole,
                                                                        tmp_path, capsys):
    out = str(tmp_path / "r.json")
    extra = []
    if case == "other-settings":
        shutil.copy(whole, out)
        extra, words = ["--steps", "6"], "other settings: alpha, steps"
    elif case == "not-a-report":
        with open(out, "w") as f:
            json.dump({"my": "notes"}, f)
        words = "not a fastadv evaluation report"
    else:  # this evaluation's report, but the plot asked for was never made
        shutil.copy(whole, out)
        extra, words = ["--plot", str(tmp_path / "c.png")], "c.png is missing"
    before = open(out).read()
    with pytest.raises(SystemExit) as exc:
        main([*args, *extra, "--json", out, "--resume", "auto"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--json {out} already exists and is not this command's finished evaluation" in err
    assert words in err and "--overwrite" in err, err
    assert open(out).read() == before and sorted(os.listdir(tmp_path)) == ["r.json"]


# --------------------------------------------------------------------------- torchrun


def test_several_torchrun_processes_are_refused_before_anything_is_written(args, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("python -m fastadv.eval: error: fastadv.eval runs in one process "
                            "(WORLD_SIZE is 2): torchrun --nproc-per-node 1 ... (restarts still "
                            "apply)\n")
    assert os.listdir(tmp_path) == []


def test_a_restarted_worker_resumes_by_itself(args, whole, killed, tmp_path, monkeypatch,
                                              capsys, units_computed):
    out = with_partial(killed, tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main([*args, "--json", out]) == 0  # a plain start would refuse the partial file
    err = capsys.readouterr().err
    assert "torchrun restart 1: continuing as with --resume auto" in err
    assert "resuming the evaluation" in err
    assert units_computed and done_units(killed).isdisjoint(units_computed)
    same_report(whole, out)
    # Restarted once more after the report was written: it is complete.
    assert main([*args, "--json", out]) == 0
    assert capsys.readouterr().out.strip() == f"already complete: {out}"


@pytest.mark.parametrize("restarts, job, continued", [(1, JOB, True), (1, "job-2", False),
                                                      (0, JOB, False)],
                         ids=["restart-same-job", "restart-other-job", "first-attempt"])
def test_overwrite_continues_only_the_partial_its_own_job_wrote(restarts, job, continued, args,
                                                                whole, killed, tmp_path,
                                                                monkeypatch, capsys,
                                                                units_computed):
    out = with_partial(killed, tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    assert main([*args, "--json", out, "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert ("continuing the evaluation this job kept" in err) == continued, err
    if continued:
        assert units_computed and done_units(killed).isdisjoint(units_computed)
    else:  # discarded: every unit computed again
        assert done_units(killed) <= set(units_computed)
    same_report(whole, out)


def torchrun_worker(launcher: subprocess.Popen) -> int | None:
    """The pid of the worker torchrun started (its only child), or None while there is none."""
    try:
        with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def test_torchrun_restarts_a_killed_worker_to_the_uninterrupted_report(args, whole, tmp_path):
    out = str(tmp_path / "r.json")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
         "--max-restarts", "1", "-m", "fastadv.eval", *args, "--json", out],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out + ".partial", launcher)
        worker = torchrun_worker(launcher)
        assert worker is not None and os.path.exists(out + ".partial"), "no worker mid-run"
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr
    assert "torchrun restart 1: continuing as with --resume auto" in stderr
    assert "resuming the evaluation" in stderr
    same_report(whole, out)
    assert sorted(os.listdir(tmp_path)) == ["r.json"]
