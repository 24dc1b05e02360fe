"""Small shared utilities: atomic writes (a reader, or a run resumed after a kill, sees the
old file or the new one, never half of one) and naming the device numbers were measured on."""

from __future__ import annotations

import contextlib
import json
import os
import platform

import torch


@contextlib.contextmanager
def atomic_open(path: str):
    """A binary file to write that replaces ``path`` only once it is complete and on disk:
    a temp file beside it, fsync, rename, fsync of the folder (so the rename survives a
    crash). On any error the temp file is removed and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # permissions from the umask, like any other output
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_json(path: str, obj, **dump_args) -> None:
    write_atomic(path, (json.dumps(obj, **{"indent": 1, **dump_args}) + "\n").encode())


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """``name`` (default: cuda when available, else cpu) as a device that exists here; a
    ValueError naming ``flag`` otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag} must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model} ({torch.get_num_threads()} threads)"
