"""``python -m fastadv.info``: versions, and which backends this install can run where."""

import json
import os
import platform
import warnings

import torch

from . import backends
from ._version import __version__


def build_info() -> dict:
    """What setup.py built and why (fastadv/_build_info.json), or {} for an unknown build."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def report() -> str:
    lines = [f"fastadv {__version__}", f"python {platform.python_version()}",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    ext = backends.extension_error()
    lines.append("fastadv._C: " + ("loaded" if ext is None else f"not available ({ext})"))
    built = build_info()
    cuda = "yes" if backends.has_cuda_kernels() else "no"
    if built.get("why"):
        cuda += f" (build: {built['why']})"
    lines.append(f"fastadv._C CUDA kernels: {cuda}")
    triton_err = backends.triton_error()
    lines.append("Triton kernels: " + ("importable" if triton_err is None else f"no ({triton_err})"))
    if triton_err is None and backends.triton_interpreted():
        lines.append("Triton kernels: interpreted (TRITON_INTERPRET=1): CPU tensors only")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    else:
        lines.append("GPU: none visible")
    forced = backends.forced()
    for device in devices:
        have = backends.available(device)
        with warnings.catch_warnings():  # the note below says it
            warnings.simplefilter("ignore", backends.BackendWarning)
            uses = backends.select(device) if forced in (None, *have) else "ERROR"
        lines.append(f"backends on {device}: {', '.join(have)} -> uses {uses}")
        note = backends.explain(device)
        if note:
            lines.append(f"  {note}")
    if forced:
        lines.append(f"FASTADV_BACKEND={forced}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
