"""The pieces under the fault handling: the run lock (held until release or death, never
stale), removal of dead writers' temp files, the atomic writer's errors, checked files."""

import errno
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

from fastadv._io import WriteError, temp_path, write_atomic
from fastadv._outdir import DirectoryBusy, RunLock, human_bytes, leftovers_line, remove_leftovers
from fastadv.checkpoint import check_digest, checkpoint_state, content_digest, save_checked

HOLD = ("import sys, time; from fastadv._outdir import RunLock; "
        "RunLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(60)")


def test_lock_names_a_live_holder_and_is_free_once_it_dies(tmp_path):
    path = str(tmp_path / ".lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryBusy, match=f"PID {holder.pid}"):
            RunLock(path, "--out run").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(path, "--out run")
    lock.acquire()  # the kernel released it: no stale lock
    assert lock.held and open(path).read().strip() == str(os.getpid())
    lock.acquire()  # idempotent
    lock.release()
    assert not os.path.exists(path) and not lock.held


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = os.getpid()
    files = {temp_path(str(tmp_path / "last.pt"), dead.pid): 1000,
             temp_path(str(tmp_path / "best.pt.pending"), dead.pid): 24,
             temp_path(str(tmp_path / "last.pt"), mine): 7,  # a live writer's (ours)
             str(tmp_path / "last.pt"): 5, str(tmp_path / ".notes.tmp"): 3}
    for path, size in files.items():
        open(path, "wb").write(b"x" * size)
    assert remove_leftovers(str(tmp_path), {"best.pt.pending"}) == (1, 24)
    assert remove_leftovers(str(tmp_path)) == (1, 1000)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".last.pt.%d.tmp" % mine, "last.pt", ".notes.tmp"])
    assert remove_leftovers(str(tmp_path / "missing")) == (0, 0)
    assert leftovers_line(2, 3 * 2**20, "run") == \
        "removed 2 temporary files (3.0 MiB) that killed writes left in run"
    assert human_bytes(5) == "5 bytes"


def _write_big(path):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    write_atomic(path, b"y" * 5000)


def test_failed_write_names_the_file_and_leaves_the_old_one(tmp_path):
    path = str(tmp_path / "out.json")
    write_atomic(path, b"old")
    code = ("import sys; sys.path.insert(0, %r); from test_rundir import _write_big; "
            "from fastadv._io import WriteError\n"
            "try:\n    _write_big(%r)\nexcept WriteError as e:\n    print(e, e.errno)"
            % (os.path.dirname(__file__), path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == f"cannot write {path}: File too large {errno.EFBIG}"
    assert open(path, "rb").read() == b"old" and os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(WriteError, match="cannot write .*: No such file or directory"):
        write_atomic(str(tmp_path / "no" / "such.json"), b"")


def test_checked_files_refuse_any_change(tmp_path):
    obj = {"w": torch.arange(6.0), "progress": {"epoch": 2, "best": -float("inf")},
           "rng": (3, (1, 2), None)}
    path = str(tmp_path / "c.pt")
    save_checked(obj, path)
    loaded = torch.load(path, weights_only=True)
    check_digest(loaded, path)
    loaded["w"][3] += 1e-6
    with pytest.raises(ValueError, match="damaged"):
        check_digest(loaded, path)
    assert content_digest({"a": 1}) != content_digest({"a": 1.0})
    check_digest({"no": "digest"}, path)  # files from before digests still load
    assert checkpoint_state(str(tmp_path / "none.pt")) == "not written yet"
    assert checkpoint_state(path).startswith("not usable")
