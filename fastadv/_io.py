"""Atomic writes: a reader, or a run resumed after a kill, sees the old file or the new one,
never half of one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

# Tests kill a writer inside a write through this: "N" makes the N-th atomic write of the
# process SIGKILL itself once half of the temp file is on disk (tests/test_faults.py).
KILL_IN_WRITE = "FASTADV_TEST_KILL_IN_SAVE"
_writes = 0


class WriteError(OSError):
    """An atomic write that failed (disk full, file too large, permissions): ``filename``
    is the file that was to be replaced, which is untouched; its temp file is gone."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def temp_path(path: str, pid: int | None = None) -> str:
    """The temp file an atomic write of ``path`` goes through: ``.NAME.PID.tmp`` beside it
    (:mod:`fastadv._outdir` removes those whose writer is dead)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid() if pid is None else pid}.tmp")


@contextlib.contextmanager
def atomic_open(path: str):
    """A binary buffer to write that replaces ``path`` only once it is complete and on disk:
    the bytes go to a temp file beside it, fsync, rename, fsync of the folder (so the rename
    survives a crash). Serialising into memory first keeps a full disk an OSError of our own
    write (not a serialiser's failure half-way). On any error the temp file is removed,
    ``path`` is untouched, and an OSError is raised as a :class:`WriteError` naming ``path``."""
    buf = io.BytesIO()
    yield buf
    _commit(path, buf.getbuffer())


def _commit(path: str, data) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)
    try:
        try:
            with open(tmp, "wb") as f:  # permissions from the umask, like any other output
                _write_all(f, data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), path) from exc


def _write_all(f, data) -> None:
    global _writes
    _writes += 1
    kill_at = os.environ.get(KILL_IN_WRITE)
    if kill_at and int(kill_at) == _writes:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    f.write(data)


def write_atomic(path: str, data: bytes) -> None:
    """``data`` as the new contents of ``path``, atomically (:func:`atomic_open`)."""
    _commit(path, data)


def write_json(path: str, obj, **dump_args) -> None:
    write_atomic(path, (json.dumps(obj, **{"indent": 1, **dump_args}) + "\n").encode())
