"""Runs a cluster stops and starts again, for real: torchrun (TorchElastic) restarting its
workers after one is SIGKILLed or SIGTERMed, a preempted job requeued with ``--resume auto``,
two torchrun agents as two "machines", no restarts left, ``fastadv.fit`` under torchrun; each
must end with exactly the weights, metrics and report of an uninterrupted 2-rank run, and the
survivors of a lost rank must say so in one line."""

import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from fastadv._outdir import LOCK_NAME
from fastadv.checkpoint import load_checkpoint
from test_faults import TINY, assert_same_run
from test_train import run_cli

# Every rank single-threaded (torchrun sets it only for several processes per agent: the
# two-agent test has one), so CPU reductions match between launches; a hang fails in 30 s.
ENV = {**{k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"},
       "OMP_NUM_THREADS": "1"}
ARGS = [*TINY, "--method", "pgd", "--dist-timeout", "30"]
STEPS = 2 * 40  # 2 epochs of 40 batches (1293 images in batches of 32)
TRANSPORT = ("Connection reset by peer", "Connection closed by peer", "GLHF")


def torchrun(*options):
    return [sys.executable, "-m", "torch.distributed.run", *options]


def standalone(logs, restarts, nproc=2):
    return torchrun("--standalone", "--nproc-per-node", str(nproc), "--max-restarts",
                    str(restarts), "--log-dir", str(logs), "--redirects", "3")


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted 2-rank run every test compares with."""
    root = tmp_path_factory.mktemp("elastic")
    out = str(root / "whole")
    result = subprocess.run([*standalone(root / "logs", 0), "-m", "fastadv.train", *ARGS,
                             "--out", out], capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def worker_pids(agent: subprocess.Popen) -> dict[int, int]:
    """{global rank: pid} of an agent's workers."""
    pids = {}
    path = f"/proc/{agent.pid}/task/{agent.pid}/children"
    for pid in open(path).read().split() if os.path.exists(path) else []:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        ranks = [e[5:] for e in env if e.startswith(b"RANK=")]
        if ranks:
            pids[int(ranks[0])] = int(pid)
    return pids


def steps_done(out) -> int:
    try:
        return load_checkpoint(os.path.join(out, "last.pt"))["progress"]["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


def signal_mid_run(agent, out, rng, sig, rank=None, target=None, spread=0.1):
    """``sig`` to ``rank``'s worker (or to ``target``, a process) just after one of the run's
    mid-run checkpoints, drawn at random from the first half of the run, plus up to
    ``spread`` seconds (before the first checkpoint a SIGTERM finds no run to stop; in the
    second half a fast run may have ended before the signal lands); returns the steps
    last.pt held just before."""
    deadline, start = time.time() + 240, steps_done(out)
    goal = rng.randrange(start + 5, max(start + 6, STEPS // 2), 5)
    while steps_done(out) < goal and agent.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, spread))
    done = steps_done(out)
    pid = target.pid if target is not None else worker_pids(agent)[rank]
    os.kill(pid, sig)
    return done


def logs_of(logs, attempt, rank) -> str:
    """A worker's stdout and stderr, from torchrun's --log-dir."""
    paths = sorted(glob.glob(f"{logs}/*/attempt_{attempt}/{rank}/std*.log"))
    assert paths, f"no logs for attempt {attempt}, rank {rank} in {logs}"
    return "".join(open(p).read() for p in paths)


def finish(agent) -> str:
    out, _ = agent.communicate(timeout=300)
    return out


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_lost_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path, whole, sig):
    """torchrun --max-restarts 1: rank 1 killed (SIGKILL, or SIGTERM: a graceful stop) at a
    random batch; the restarted workers resume by themselves, to the uninterrupted result."""
    out, logs = str(tmp_path / "run"), tmp_path / "logs"
    agent = subprocess.Popen([*standalone(logs, 1), "-m", "fastadv.train", *ARGS, "--out", out],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=ENV)
    done = signal_mid_run(agent, out, random.Random(f"elastic-{sig}"), getattr(signal, sig),
                          rank=1)
    text = finish(agent)
    assert agent.returncode == 0, text[-3000:]
    assert 0 < done < STEPS, "the signal should land mid-run"
    survivor, resumed = logs_of(logs, 0, 0), logs_of(logs, 1, 0)
    if sig == "SIGKILL":  # one line on the survivor, no transport traceback
        lines = [line for line in survivor.splitlines() if "lost rank 1" in line]
        assert len(lines) == 1, survivor[-3000:]
        assert "torchrun restarts the workers (this machine's restart 1 of 1)" in lines[0]
        # The transport's words only inside that line, as its reason.
        assert [line for line in survivor.splitlines()
                if any(t in line for t in TRANSPORT)] == lines
        assert "GLHF" not in survivor and "Traceback" not in survivor
    else:  # both ranks stop at the same boundary, last.pt written there
        stopped = [next(line for line in logs_of(logs, 0, r).splitlines()
                        if "stopped by SIGTERM" in line) for r in (0, 1)]
        assert stopped[0] == stopped[1]
        where = re.search(r"at epoch (\d+), batch (\d+) of 40", stopped[0]) or \
            re.search(r"at the end of epoch (\d+)()", stopped[0])
        epoch, batch = int(where[1]), int(where[2] or 40)
        going_on = (epoch, batch + 1) if batch < 40 else (epoch + 1, 1)
        assert f"resuming {out} at epoch {going_on[0]}, batch {going_on[1]} of 40" in resumed
    assert "resuming" in resumed
    assert_same_run(whole, out)


@pytest.mark.parametrize("text, peer", [
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
     "[127.0.0.1]:5000", True),
    ("Read error [127.0.0.1]:57735: Connection reset by peer", True),
    ("Application timeout caused pair closure", True),  # gloo's words for a frozen peer
    ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 10000ms "
     "for recv operation to complete", True),
    ("DataLoader timed out after 5 seconds", False),
    ("CUDA error: an illegal memory access was encountered", False),
])
def test_a_transport_failure_is_told_from_other_errors(text, peer):
    """Only what gloo and NCCL say when a peer is gone starts the roll call; anything else
    keeps its traceback."""
    from fastadv.train.distributed import is_peer_failure
    assert is_peer_failure(RuntimeError(text)) is peer
    assert not is_peer_failure(ValueError(text))


def test_a_rank_that_stops_answering_is_reported_after_dist_timeout_and_the_run_resumes(
        tmp_path, whole):
    """A frozen rank (SIGSTOP: a machine gone from the network sends nothing, not even a
    reset) holds the others in a collective until --dist-timeout; they name it in one line,
    torchrun restarts the workers, and the run ends as if uninterrupted."""
    out, logs = str(tmp_path / "run"), tmp_path / "logs"
    agent = subprocess.Popen([*standalone(logs, 1), "-m", "fastadv.train", *ARGS,
                              "--dist-timeout", "10", "--out", out], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=ENV)
    done = signal_mid_run(agent, out, random.Random("frozen"), signal.SIGSTOP, rank=1)
    text = finish(agent)  # torchrun SIGKILLs the frozen rank 30 s after its SIGTERM
    assert agent.returncode == 0, text[-3000:]
    assert 0 < done < STEPS
    survivor = logs_of(logs, 0, 0)
    lines = [line for line in survivor.splitlines() if "lost rank 1" in line]
    assert len(lines) == 1, survivor[-3000:]
    assert "Traceback" not in survivor
    assert "resuming" in logs_of(logs, 1, 0)
    assert_same_run(whole, out)


def test_a_preempted_job_requeued_with_resume_auto_ends_as_if_uninterrupted(tmp_path, whole):
    """Slurm preemption: torchrun itself gets SIGTERM and passes it to the workers, which
    write last.pt at the next batch and stop; the requeued command, with --resume auto,
    continues it (and started it the first time)."""
    out, logs = str(tmp_path / "run"), tmp_path / "logs"
    command = [*standalone(logs, 0), "-m", "fastadv.train", *ARGS, "--out", out,
               "--resume", "auto"]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=ENV)
    before = signal_mid_run(agent, out, random.Random("preempt"), signal.SIGTERM, target=agent)
    text = finish(agent)
    assert agent.returncode != 0, text[-3000:]
    stopped_at = steps_done(out)
    assert before <= stopped_at < STEPS  # last.pt written at the stop, not only at the save
    assert "stopped by SIGTERM" in logs_of(logs, 0, 0)
    requeued = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert any("resuming" in open(p).read() for p in glob.glob(f"{logs}/*/*/0/stdout.log"))
    assert_same_run(whole, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_one_loses_its_worker_and_the_run_ends_as_if_uninterrupted(tmp_path,
                                                                                  whole):
    """Two torchrun agents (--nnodes 2, c10d rendezvous), one process each: agent B's worker
    is SIGKILLed; B restarts it, A restarts its own for the new membership (its restart count
    stays 0), and the run resumes from last.pt on both."""
    out, port, job = str(tmp_path / "run"), free_port(), uuid.uuid4().hex
    agents = []
    for name, host in (("a", 1), ("b", 0)):
        command = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
                           "--rdzv-conf", f"is_host={host}", "--max-restarts", "1",
                           "--log-dir", str(tmp_path / f"logs-{name}"), "--redirects", "3",
                           "-m", "fastadv.train", *ARGS, "--out", out)
        agents.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=ENV))
    a, b = agents
    deadline = time.time() + 120
    while not worker_pids(b) and time.time() < deadline:
        time.sleep(0.05)
    rank_on_b = next(iter(worker_pids(b)))
    done = signal_mid_run(b, out, random.Random("two-agents"), signal.SIGKILL, rank=rank_on_b)
    texts = [finish(agent) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert 0 < done < STEPS
    assert_same_run(whole, out)


def test_a_restart_after_a_refusal_is_refused_again(tmp_path):
    """--out holds another, unfinished run of the same flags: the first attempt refuses it,
    and so does the restart (a restart resumes only the run its own job claimed)."""
    out, logs = str(tmp_path / "run"), tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.train", *ARGS, "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    signal_mid_run(proc, out, random.Random("refused"), signal.SIGKILL, target=proc,
                   spread=0.2)
    proc.wait(timeout=60)
    files = lambda: {n: os.path.getmtime(os.path.join(out, n))  # noqa: E731
                     for n in os.listdir(out) if n != LOCK_NAME}
    before = files()
    result = subprocess.run([*standalone(logs, 1), "-m", "fastadv.train", *ARGS, "--out", out],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode != 0
    for attempt in (0, 1):
        assert "already holds a run, unfinished" in logs_of(logs, attempt, 0)
    assert files() == before


def test_no_restarts_left_is_one_line_naming_the_command_to_resume(tmp_path, whole):
    out, logs = str(tmp_path / "run"), tmp_path / "logs"
    agent = subprocess.Popen([*standalone(logs, 0), "-m", "fastadv.train", *ARGS, "--out", out],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=ENV)
    signal_mid_run(agent, out, random.Random("no-restarts"), signal.SIGKILL, rank=1)
    finish(agent)
    assert agent.returncode != 0
    survivor = logs_of(logs, 0, 0)
    lines = [line for line in survivor.splitlines() if "lost rank 1" in line]
    assert len(lines) == 1, survivor[-3000:]
    assert "no torchrun restarts left" in lines[0] and "--resume auto" in lines[0]
    assert "Traceback" not in survivor
    again = subprocess.run([*standalone(tmp_path / "logs2", 0), "-m", "fastadv.train", *ARGS,
                            "--out", out, "--resume", "auto"], capture_output=True, text=True,
                           env=ENV, timeout=300)  # the command the line names
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(whole, out)


FIT_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from sklearn.datasets import load_digits
    import fastadv

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    fastadv.fit(model, (x[:1200], y[:1200]), test_data=(x[1200:], y[1200:]), eps=0.2,
                epochs=2, steps=2, batch_size=32, save_every=5, out=sys.argv[1],
                progress=False, dist_timeout=30)
""")


def test_fit_under_torchrun_resumes_after_a_lost_worker(tmp_path):
    script = tmp_path / "train_digits.py"
    script.write_text(FIT_SCRIPT)
    whole_out, out = str(tmp_path / "whole"), str(tmp_path / "run")
    result = subprocess.run([*standalone(tmp_path / "logs0", 0), str(script), whole_out],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    logs = tmp_path / "logs"
    agent = subprocess.Popen([*standalone(logs, 1), str(script), out], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=ENV)
    done = signal_mid_run(agent, out, random.Random("fit"), signal.SIGKILL, rank=1)
    text = finish(agent)
    assert agent.returncode == 0, text[-3000:]
    assert 0 < done < 2 * 38  # 1200 - 120 held out = 1080 images: 34 batches of 32 an epoch
    assert "resuming" in logs_of(logs, 1, 0)
    assert_same_run(whole_out, out)


# --------------------------------------------------------------------------- one process


def test_resume_auto_in_one_process_sigkill_and_sigterm(tmp_path):
    """--resume auto starts a run, continues it after a SIGKILL, and after a SIGTERM, which
    writes last.pt at the next batch and exits 143; the result is the uninterrupted one."""
    whole_out, out = str(tmp_path / "whole"), str(tmp_path / "run")
    assert run_cli(*ARGS, "--out", whole_out, env=ENV).returncode == 0
    rng = random.Random("one-process")
    command = [sys.executable, "-m", "fastadv.train", *ARGS, "--out", out, "--resume", "auto"]
    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)
        before = signal_mid_run(proc, out, rng, sig, target=proc, spread=0.2)  # 1 s a run
        _, err = proc.communicate(timeout=300)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143, err[-2000:]
            assert "stopped by SIGTERM" in err and "--resume auto" in err
            assert steps_done(out) >= before
        else:
            assert proc.returncode == -signal.SIGKILL
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    assert_same_run(whole_out, out)
    # A finished run, the same command again: the report only, the same files.
    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(whole_out, out)


def test_resume_auto_never_takes_over_another_folder(tmp_path):
    """Another run's folder (other settings), a user's files, a run's files without last.pt
    are refused with one line and left as they are; --resume auto --overwrite is refused."""
    other = str(tmp_path / "other")
    assert run_cli(*ARGS, "--epochs", "1", "--out", other).returncode == 0
    before = {n: os.path.getmtime(os.path.join(other, n)) for n in os.listdir(other)}
    result = run_cli(*ARGS, "--out", other, "--resume", "auto")
    assert result.returncode == 2
    assert "--resume auto: --out" in result.stderr and "holds another run (--epochs 1 -> 2)" \
        in result.stderr
    assert {n: os.path.getmtime(os.path.join(other, n)) for n in os.listdir(other)} == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = run_cli(*ARGS, "--out", str(mine), "--resume", "auto")
    assert result.returncode == 2 and "files that are not a fastadv run" in result.stderr
    assert os.listdir(mine) == ["notes.txt"]

    result = run_cli(*ARGS, "--out", str(mine), "--resume", "auto", "--overwrite")
    assert result.returncode == 2 and "pass one of them" in result.stderr
    result = run_cli(*ARGS, "--out", str(mine), "--resume", "sometimes")
    assert result.returncode == 2 and "the only value --resume takes is auto" in result.stderr


def test_a_restarted_overwrite_command_resumes_its_own_run_and_replaces_others(tmp_path):
    """torchrun restarts the command as given, --overwrite included: the run an earlier
    attempt of the same job (same TORCHELASTIC_RUN_ID) started is continued, not replaced;
    another job's run is replaced, as --overwrite asks."""
    out = str(tmp_path / "run")
    first = {**ENV, "TORCHELASTIC_RUN_ID": "job-1", "TORCHELASTIC_RESTART_COUNT": "0",
             "TORCHELASTIC_MAX_RESTARTS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.train", *ARGS, "--out", out,
                             "--overwrite"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=first)
    signal_mid_run(proc, out, random.Random("overwrite"), signal.SIGKILL, target=proc)
    proc.wait(timeout=60)
    assert json.load(open(os.path.join(out, "config.json")))["torchelastic_run_id"] == "job-1"
    restart = {**first, "TORCHELASTIC_RESTART_COUNT": "1"}
    result = run_cli(*ARGS, "--out", out, "--overwrite", env=restart)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout and "--overwrite: removed" not in result.stdout
    other = {**restart, "TORCHELASTIC_RUN_ID": "job-2"}
    result = run_cli(*ARGS, "--out", out, "--overwrite", env=other)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--overwrite: removed" in result.stdout and "resuming" not in result.stdout
