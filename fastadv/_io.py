"""Atomic writes: a reader, or a run resumed after a kill, sees the old file or the new one,
never half of one."""

from __future__ import annotations

import contextlib
import io
import json
import math
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


def finite_json(obj, nulled: dict | None = None, where: str = ""):
    """``obj`` with every NaN/inf float replaced by None (JSON has no such numbers: json.dump
    would write bare NaN tokens, which strict parsers reject); each replaced value's path and
    what it was go into ``nulled`` ({"loss": "nan", "rows[1].acc": "inf"})."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if nulled is not None:
            nulled[where or "value"] = "nan" if math.isnan(obj) else ("inf" if obj > 0
                                                                      else "-inf")
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v, nulled, f"{where}.{k}" if where else str(k))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, nulled, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def json_record(record: dict) -> str:
    """One strict-JSON line for a record: non-finite numbers become null, and the record
    says which and why under "null_reason"."""
    nulled = {}
    clean = finite_json(record, nulled)
    if nulled:
        clean["null_reason"] = {k: f"the value was {v}" for k, v in nulled.items()}
    return json.dumps(clean, allow_nan=False)


def write_json(path: str, obj, **dump_args) -> None:
    """``obj`` as strict JSON (non-finite numbers as null), written atomically."""
    text = json.dumps(finite_json(obj), **{"indent": 1, **dump_args, "allow_nan": False})
    write_atomic(path, (text + "\n").encode())
