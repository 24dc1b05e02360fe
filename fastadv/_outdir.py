"""What an output directory (a training run's, an evaluation's) needs to survive the faults
a long job meets: one job at a time (an OS file lock, released by the kernel when its holder
dies, so a killed job leaves no stale lock), the temp files of writes a kill interrupted
removed on the next start, and which attempt of a torchrun job this is (a restart continues
what an earlier attempt left)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time

LOCK_NAME = ".fastadv.lock"
# The temp files of fastadv._io.atomic_open: .NAME.PID.tmp
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


class DirectoryBusy(ValueError):
    """Another live process holds the lock: a second run on the same output."""

    def __init__(self, what: str, pid: int | None):
        self.pid = pid
        holder = f"PID {pid}" if pid else "a process that has not written its PID yet"
        super().__init__(f"{what} is in use by another run ({holder}); wait for it to finish "
                         "or stop it, or choose another output")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (created as needed, holding the
    holder's PID), kept until :meth:`release` or the process's death."""

    def __init__(self, path: str, what: str):
        self.path, self.what, self._fd = path, what, None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock (a no-op when held); DirectoryBusy naming the holder's PID when a
        live process has it."""
        if self._fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise DirectoryBusy(self.what, pid) from None
            # A holder releasing unlinks the file: the one just locked may be gone, and a
            # third process could lock a new one. Only the file at the path counts.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding it (see acquire)
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    for _ in range(20):  # the holder writes its PID just after locking
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


def launch_rank() -> int:
    """This process's rank under torchrun (RANK), before the process group exists; 0 alone."""
    return int(os.environ.get("RANK", "0"))


def restart_count() -> int:
    """How many times this rank's torchrun agent has restarted its workers (0 outside
    torchrun, or when this agent restarted only because another node's worker failed)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


def run_id() -> str | None:
    """torchrun's job id (``--rdzv-id``; a fresh uuid under ``--standalone``), or None when
    there is none that tells two launches apart (outside torchrun, or the default "none")."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if value in (None, "", "none") else value


def under_torchelastic() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


# --------------------------------------------------------------------------- leftovers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    try:  # a zombie (killed, not yet reaped) writes nothing more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the temp file of an atomic write (``.NAME.PID.tmp``)."""
    return _TEMP.match(name) is not None


def remove_leftovers(directory: str, names=None) -> tuple[int, int]:
    """Removes the temp files of atomic writes (``.NAME.PID.tmp``) in ``directory`` whose
    writer is dead, only for ``names`` when given; returns (how many, bytes)."""
    count = size = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or (names is not None and m["name"] not in names) or not entry.is_file():
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            bytes_ = entry.stat().st_size
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        count, size = count + 1, size + bytes_
    return count, size


def leftovers_line(count: int, size: int, directory: str) -> str:
    return (f"removed {count} temporary file{'s' if count != 1 else ''} "
            f"({human_bytes(size)}) that killed writes left in {directory}")


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
