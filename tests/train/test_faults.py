"""Faults a long run meets, injected for real: SIGKILL at random points (inside checkpoint
writes too) many times over for training (PGD, free, TRADES) and evaluation, then a resume
that must end exactly like an uninterrupted run; a damaged last.pt, an edited config.json, a
missing metrics.jsonl; a second run on the same output; a full disk and a file-size limit.
The number of faults injected and survived is printed at the end of the module."""

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastadv.checkpoint import load_checkpoint
from fastadv._io import KILL_IN_WRITE
from fastadv._outdir import LOCK_NAME
from helpers import same_report
from test_train import read_metrics, run_cli, same_weights, weights

# 40 batches an epoch, a checkpoint every 5: ~20 atomic writes in a whole run.
TINY = ["--dataset", "digits", "--width", "1", "--epochs", "2", "--batch-size", "32",
        "--steps", "2", "--eval-steps", "2", "--eval-examples", "32", "--save-every", "5",
        "--free-replays", "2", "--no-progress"]
TIMING = ("seconds", "images_per_s", "eval_seconds")
FAULTS = {"injected": 0, "survived": 0}


@pytest.fixture(scope="module", autouse=True)
def fault_counts(request):
    yield
    capman = request.config.pluginmanager.getplugin("capturemanager")
    line = (f"\nfault injection: {FAULTS['injected']} faults injected, "
            f"{FAULTS['survived']} survived (resumed to the uninterrupted result, or refused "
            "with one clear line and nothing lost)")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(line)
    else:
        print(line)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Uninterrupted runs, one per method, made on first use."""
    runs, root = {}, tmp_path_factory.mktemp("whole")

    def get(method):
        if method not in runs:
            out = str(root / method)
            result = run_cli(*TINY, "--method", method, "--out", out)
            assert result.returncode == 0, result.stderr
            runs[method] = out
        return runs[method]
    return get


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_run(whole_out, out):
    """Weights (last.pt and best.pt), every metric but wall-clock times, and the report."""
    for name in ("last.pt", "best.pt"):
        assert same_weights(weights(os.path.join(whole_out, name)),
                            weights(os.path.join(out, name))), name
    assert untimed(read_metrics(out)) == untimed(read_metrics(whole_out))
    report = lambda d: json.load(open(os.path.join(d, "results.json")))["checkpoints"]  # noqa
    assert report(out) == report(whole_out)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def killed_in_write(n, args, **kwargs):
    """The command run with its n-th atomic write killed half-way: (returncode, stdout)."""
    result = run_cli(*args, env={KILL_IN_WRITE: str(n)}, **kwargs)
    return result.returncode, result.stdout + result.stderr


def kill_at_random_time(args, rng, out):
    """SIGKILL at a random moment after the first checkpoint exists."""
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "last.pt")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL


# --------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "free", "trades"])
def test_training_killed_many_times_ends_like_an_uninterrupted_run(tmp_path, whole, method):
    rng = random.Random(f"faults-{method}")
    args = [*TINY, "--method", method]
    out = str(tmp_path / "run")
    # The first start: killed inside a checkpoint write (write 1 is config.json, 2 the
    # empty metrics.jsonl, then the checkpoints).
    code, _ = killed_in_write(rng.randint(3, 8), [*args, "--out", out])
    assert code == -signal.SIGKILL
    kills, leftovers = 1, 0
    for _ in range(2):  # each resume killed inside one of its writes (metrics.jsonl first)
        code, text = killed_in_write(rng.randint(2, 6), [*args, "--out", out, "--resume"])
        leftovers += "removed 1 temporary file" in text
        if code == -signal.SIGKILL:
            kills += 1
    if kill_at_random_time([*args, "--out", out, "--resume"], rng, out):
        kills += 1
    FAULTS["injected"] += kills
    assert kills >= 3
    assert leftovers >= 2  # every kill inside a write left a temp file; the next start removed it

    result = run_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(whole(method), out)
    FAULTS["survived"] += kills


def test_a_run_killed_before_its_config_json_starts_again_with_the_same_command(tmp_path, whole):
    """Killed at any instant before its first checkpoint, even before config.json exists: the
    same command, with or without --resume, starts it again to the uninterrupted result."""
    args = [*TINY, "--method", "pgd"]
    for extra in ([], ["--resume"]):
        out = str(tmp_path / f"run{len(extra)}")
        code, _ = killed_in_write(1, [*args, "--out", out])  # write 1: config.json
        assert code == -signal.SIGKILL
        left = sorted(os.listdir(out))
        assert "config.json" not in left and LOCK_NAME in left
        assert any(n.startswith(".config.json.") and n.endswith(".tmp") for n in left), left
        FAULTS["injected"] += 1
        result = run_cli(*args, "--out", out, *extra)
        assert result.returncode == 0, result.stderr
        assert_same_run(whole("pgd"), out)
        FAULTS["survived"] += 1
    # Killed right after creating the folder: it is empty.
    out = tmp_path / "empty"
    out.mkdir()
    result = run_cli(*args, "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), str(out))


def test_resume_refuses_a_folder_that_holds_something_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_cli(*TINY, "--method", "pgd", "--out", str(out), "--resume")
    assert result.returncode == 2 and "last.pt does not exist (nothing to resume" in result.stderr
    assert "it holds notes.txt" in result.stderr
    assert sorted(os.listdir(out)) == ["notes.txt"]


# --------------------------------------------------------------------------- evaluation


EVAL = ["--n-examples", "64", "--batch-size", "16", "--attacks", "fgsm,pgd", "--steps", "5",
        "--restarts", "2", "--sanity-examples", "32", "--curve-steps", "4", "--no-progress"]


def run_eval(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("FASTADV_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "fastadv.eval", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_evaluation_killed_many_times_ends_like_an_uninterrupted_one(tmp_path, whole):
    ckpt = os.path.join(whole("pgd"), "best.pt")
    args = ["--checkpoint", ckpt, *EVAL]
    whole_json = str(tmp_path / "whole.json")
    assert run_eval(*args, "--json", whole_json).returncode == 0
    rng = random.Random("faults-eval")
    killed = str(tmp_path / "killed.json")
    kills, leftovers = 0, 0
    for attempt in range(4):
        resume = ["--resume"] if attempt else []
        result = run_eval(*args, "--json", killed, *resume,
                          env={KILL_IN_WRITE: str(rng.randint(1, 5))})
        leftovers += "removed 1 temporary file" in result.stderr
        if result.returncode == -signal.SIGKILL:
            kills += 1
    FAULTS["injected"] += kills
    assert kills == 4 and leftovers == 3
    assert os.path.exists(killed + ".partial") and not os.path.exists(killed)
    result = run_eval(*args, "--json", killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert "removed 1 temporary file" in result.stderr
    same_report(whole_json, killed)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n.endswith(".lock")]
    FAULTS["survived"] += kills


# --------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A pgd run killed inside a checkpoint write in its second epoch (last.pt and best.pt
    both exist); each test works on a copy."""
    out = str(tmp_path_factory.mktemp("killed") / "run")
    code, _ = killed_in_write(16, [*TINY, "--method", "pgd", "--out", out])
    assert code == -signal.SIGKILL
    progress = load_checkpoint(os.path.join(out, "last.pt"))["progress"]
    assert progress["epoch"] == 1 and progress["step_in_epoch"] > 0
    return out


def copy_of(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    return out


def resume(out, *extra, **kwargs):
    return run_cli(*TINY, "--method", "pgd", "--out", out, "--resume", *extra, **kwargs)


def flip_a_weight_byte(path):
    """One byte of the model's first tensor flipped: torch.load still reads the file."""
    first = next(iter(load_checkpoint(path)["model"].values()))
    data = bytearray(open(path, "rb").read())
    at = data.find(first.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert at >= 0
    data[at + 1] ^= 0x40
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_last_pt_is_refused_and_best_pt_resumes_the_run(tmp_path, whole, killed_run,
                                                                 damage):
    out = copy_of(killed_run, tmp_path)
    last = os.path.join(out, "last.pt")
    before = open(last, "rb").read()
    if damage == "truncated":
        open(last, "wb").write(before[:len(before) // 2])
    else:
        flip_a_weight_byte(last)
    FAULTS["injected"] += 1
    refused = resume(out)
    assert refused.returncode == 2, refused.stderr
    assert "last.pt" in refused.stderr and "damaged" in refused.stderr
    assert "best.pt is intact (1 epoch done)" in refused.stderr and "copy it" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The advice works: best.pt (end of epoch 1) resumes to the uninterrupted result.
    shutil.copyfile(os.path.join(out, "best.pt"), last)
    result = resume(out)
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), out)
    FAULTS["survived"] += 1


def test_config_json_edited_by_hand_is_refused(tmp_path, killed_run):
    out = copy_of(killed_run, tmp_path)
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    config["eps"] = 0.1
    json.dump(config, open(path, "w"))
    FAULTS["injected"] += 2
    refused = resume(out)
    assert refused.returncode == 2
    assert "config.json was changed" in refused.stderr and "eps: 0.2 in last.pt" in refused.stderr
    open(path, "w").write("{not json")
    refused = resume(out)
    assert refused.returncode == 2 and "config.json is not valid JSON" in refused.stderr
    FAULTS["survived"] += 2  # refused with one clear line, nothing written


def test_missing_metrics_jsonl_is_rebuilt_from_last_pt(tmp_path, whole, killed_run):
    out = copy_of(killed_run, tmp_path)
    os.remove(os.path.join(out, "metrics.jsonl"))
    FAULTS["injected"] += 1
    result = resume(out)
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), out)
    FAULTS["survived"] += 1


# --------------------------------------------------------------------------- two runs at once


def wait_for(lock, proc, seconds=120):
    """Until ``proc`` holds ``lock`` and has written its PID there."""
    def written():
        try:
            return open(lock).read().strip() == str(proc.pid)
        except FileNotFoundError:
            return False
    deadline = time.time() + seconds
    while not written() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert written(), "the first run should hold the lock"


def test_second_run_on_the_same_out_exits_2_naming_the_holder(tmp_path, whole):
    out = str(tmp_path / "run")
    args = [*TINY, "--method", "pgd"]
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    first = subprocess.Popen([sys.executable, "-m", "fastadv.train", *args, "--out", out],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(os.path.join(out, LOCK_NAME), first)
        first.send_signal(signal.SIGSTOP)  # it keeps the lock while the second one tries
        for extra in ([], ["--resume"]):
            second = run_cli(*args, "--out", out, *extra)
            assert second.returncode == 2, second.stderr
            assert f"in use by another run (PID {first.pid})" in second.stderr
            assert second.stdout == ""  # it wrote nothing, started nothing
        first.send_signal(signal.SIGKILL)  # the kernel drops its lock: none is left stale
        assert first.wait() == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    FAULTS["injected"] += 2  # the second run, and the kill of the first
    result = run_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), out)
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # released at the end
    FAULTS["survived"] += 2


def test_second_evaluation_on_the_same_json_exits_2_naming_the_holder(tmp_path, whole):
    ckpt = os.path.join(whole("pgd"), "best.pt")
    report = str(tmp_path / "r.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FASTADV_BACKEND", None)
    first = subprocess.Popen([sys.executable, "-m", "fastadv.eval", "--checkpoint", ckpt,
                              *EVAL, "--n-examples", "360", "--json", report], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(str(tmp_path / ".r.json.lock"), first)
        first.send_signal(signal.SIGSTOP)
        second = run_eval("--checkpoint", ckpt, *EVAL, "--json", report, "--resume")
        assert second.returncode == 2
        assert f"in use by another run (PID {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()
    FAULTS["injected"] += 1
    FAULTS["survived"] += 1

# --------------------------------------------------------------------------- full disk


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _check_failed_save(result, out, before, why):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write {out}/last.pt: {why}" in lines[0]
    assert "last.pt is intact (1 epoch done, batch" in lines[0]
    assert open(os.path.join(out, "last.pt"), "rb").read() == before  # nothing renamed in
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_file_size_limit_while_saving_is_one_clear_line(tmp_path, whole, killed_run):
    out = copy_of(killed_run, tmp_path)
    before = open(os.path.join(out, "last.pt"), "rb").read()
    limit = _limit_file_size(len(before) // 2)  # metrics.jsonl fits, a checkpoint does not
    result = resume(out, preexec_fn=limit)
    assert "removed 1 temporary file" in result.stdout  # the kill's leftover
    _check_failed_save(result, out, before, "File too large")
    debug = resume(out, "--debug", preexec_fn=limit)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    FAULTS["injected"] += 2
    result = resume(out)  # room again: the run completes as if nothing happened
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), out)
    FAULTS["survived"] += 2


def test_full_disk_while_saving_is_one_clear_line(tmp_path, whole, killed_run):
    """A real ENOSPC: a small tmpfs (needs the right to mount; skipped where it is missing)."""
    mount = tmp_path / "small"
    mount.mkdir()
    size = os.path.getsize(os.path.join(killed_run, "last.pt"))
    # last.pt, best.pt, the killed write's half-file, config and metrics fit; one more
    # checkpoint does not, even once the half-file is removed.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 27 // 10}", "tmpfs",
                              str(mount)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        out = copy_of(killed_run, mount)
        before = open(os.path.join(out, "last.pt"), "rb").read()
        result = resume(out)
        _check_failed_save(result, out, before, "No space left on device")
        FAULTS["injected"] += 1
        final = str(tmp_path / "moved")
        shutil.copytree(out, final)  # moved somewhere with room: it completes
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    result = resume(final)
    assert result.returncode == 0, result.stderr
    assert_same_run(whole("pgd"), final)
    FAULTS["survived"] += 1


def test_under_torchrun_rank_0_takes_the_lock_and_every_rank_stops(tmp_path):
    """Rank 0 finds --out held: it exits 2 naming the holder, torchrun stops the other rank,
    and nothing is written."""
    out = tmp_path / "run"
    out.mkdir()
    hold = ("import sys, time; from fastadv._outdir import RunLock; "
            "RunLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", "-m", "fastadv.train", *TINY, "--out", str(out)], capture_output=True,
            text=True, timeout=300, env=env)
    finally:
        holder.kill()
        holder.wait()
    FAULTS["injected"] += 1
    assert result.returncode != 0
    assert f"--out {out} is in use by another run (PID {holder.pid})" in result.stderr
    assert "exitcode  : 2" in result.stderr  # rank 0's status: bad input
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # the holder's file; nothing of ours
    FAULTS["survived"] += 1
