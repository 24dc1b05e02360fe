"""Which kernel backends this install has, and which one an op uses on a device.

Preference per device (DESIGN.md): CUDA → the faster of Triton and CUDA C++, then the
other, then the PyTorch reference; CPU → the C++ kernels, then the reference.
``FASTADV_BACKEND=triton|cuda|cpp|torch`` forces one (an error if it cannot run there).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("triton", "cuda", "cpp", "torch")

# Until a GPU benchmark says otherwise, Triton leads on CUDA (it is also the backend that
# runs wherever Triton does, without a compiled extension).
CUDA_PREFERENCE = ("triton", "cuda", "torch")
CPU_PREFERENCE = ("cpp", "torch")


@functools.cache
def extension_error() -> str | None:
    """Why fastadv._C could not be loaded, or None when it is loaded."""
    try:
        importlib.import_module("fastadv._C")
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def has_extension() -> bool:
    return extension_error() is None


@functools.cache
def has_cuda_kernels() -> bool:
    """True when fastadv._C was built with its CUDA kernels."""
    if not has_extension():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastadv::_linf_step_kernel_", "CUDA")


@functools.cache
def triton_error() -> str | None:
    """Why the Triton kernels cannot be used, or None when they can."""
    try:
        importlib.import_module("fastadv.kernels")
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device | str) -> tuple[str, ...]:
    """The backends that can run on ``device``, in order of preference."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _available(device_type, triton_interpreted())


@functools.cache
def _available(device_type: str, interpreted: bool) -> tuple[str, ...]:
    if device_type == "cuda":
        have = {"triton": triton_error() is None, "cuda": has_cuda_kernels(), "torch": True}
        return tuple(b for b in CUDA_PREFERENCE if have[b])
    if device_type == "cpu":
        # The Triton interpreter runs the Triton kernels on CPU tensors (for testing).
        have = {"cpp": has_extension(), "torch": True}
        order = tuple(b for b in CPU_PREFERENCE if have[b])
        if interpreted and triton_error() is None:
            order += ("triton",)
        return order
    return ("torch",)


def forced() -> str | None:
    """The backend named by FASTADV_BACKEND, or None."""
    name = os.environ.get("FASTADV_BACKEND", "").strip().lower()
    if not name:
        return None
    if name not in BACKENDS:
        raise ValueError(f"FASTADV_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def select(device: torch.device) -> str:
    """The backend an op uses for tensors on ``device``."""
    have = available(device)
    name = forced()
    if name is None:
        return have[0]
    if name not in have:
        raise RuntimeError(
            f"FASTADV_BACKEND={name} cannot run on {torch.device(device).type} tensors here; "
            f"available: {', '.join(have)} (see `python -m fastadv.info`)"
        )
    return name

