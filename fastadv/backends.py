"""Which kernel backends this install has, and which one an op uses on a device.

Preference per device (see docs/ARCHITECTURE.md): CUDA → the faster of Triton and CUDA C++,
then the other, then the PyTorch reference; CPU → the C++ kernels, then the reference.
``FASTADV_BACKEND=triton|cuda|cpp|torch`` forces one (an error if it cannot run there).

A choice below the best on CUDA is never silent: it raises one :class:`BackendWarning` per
process and cause, naming the backend used, why, and how to fix it:

- no Triton and no CUDA C++ kernels: the reference runs (several kernels per step);
- ``TRITON_INTERPRET=1`` when the Triton kernels were imported: they would run CUDA tensors
  through host copies (orders of magnitude slower, no CUDA graph capture), so CUDA tensors
  skip Triton;
- a Triton kernel that fails to compile or launch: that kernel uses the next backend for the
  rest of the process (the op layer reports the failure with :func:`triton_failed`).

Forcing a backend that cannot run (``FASTADV_BACKEND=triton`` under the interpreter on CUDA)
raises instead, as does a forced Triton kernel that fails. Choices are cached per (device
type, kernel, ``FASTADV_BACKEND``): a call costs one environment read and one dict lookup.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

BACKENDS = ("triton", "cuda", "cpp", "torch")

# Until a GPU benchmark says otherwise, Triton leads on CUDA (it is also the backend that
# runs wherever Triton does, without a compiled extension).
CUDA_PREFERENCE = ("triton", "cuda", "torch")
# Triton runs on CPU tensors only in its interpreter (tests force it there).
CPU_PREFERENCE = ("cpp", "torch", "triton")

CUDA_BUILD_FIX = ("rebuild fastadv with its CUDA kernels: FASTADV_BUILD_CUDA=1 pip install "
                  "--no-build-isolation -e . (needs nvcc and a CUDA build of torch)")


class BackendWarning(RuntimeWarning):
    """An op runs on a slower backend than the best for its device; the message says why."""


# --------------------------------------------------------------------------- what is installed


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
    except Exception as exc:  # ImportError, or a Triton that breaks while importing
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def triton_interpreted() -> bool:
    """Whether fastadv's Triton kernels run in Triton's interpreter. Triton decides when a
    kernel is defined (``TRITON_INTERPRET=1`` at import), so this asks the kernels."""
    if triton_error() is not None:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    kinds = {type(value).__name__ for name, module in list(sys.modules.items())
             if name.startswith("fastadv.kernels.") and module is not None
             for value in vars(module).values()}
    return "InterpretedFunction" in kinds


@dataclass(frozen=True)
class Facts:
    """What the backend choice depends on (tests inject their own)."""

    extension_error: Optional[str]
    cuda_kernels: bool
    triton_error: Optional[str]
    triton_interpreted: bool
    # (device type, kernel) -> the error of that Triton kernel's failed compile or launch
    triton_failures: Mapping[tuple[str, str], str] = field(default_factory=dict)


_triton_failures: dict[tuple[str, str], str] = {}


def facts() -> Facts:
    """This process's facts."""
    return Facts(extension_error(), has_cuda_kernels(), triton_error(), triton_interpreted(),
                 dict(_triton_failures))


# --------------------------------------------------------------------------- the choice


def _device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def _runnable(device_type: str, f: Facts) -> tuple[str, ...]:
    if device_type == "cuda":
        # Interpreted Triton kernels would run CUDA tensors through host copies.
        have = {"triton": f.triton_error is None and not f.triton_interpreted,
                "cuda": f.cuda_kernels, "torch": True}
        return tuple(b for b in CUDA_PREFERENCE if have[b])
    if device_type == "cpu":
        have = {"cpp": f.extension_error is None, "torch": True,
                "triton": f.triton_error is None and f.triton_interpreted}
        return tuple(b for b in CPU_PREFERENCE if have[b])
    return ("torch",)


def available(device: torch.device | str) -> tuple[str, ...]:
    """The backends that can run on ``device``, in order of preference."""
    return _runnable(_device_type(device), facts())


def forced() -> str | None:
    """The backend named by FASTADV_BACKEND, or None."""
    name = os.environ.get("FASTADV_BACKEND", "").strip().lower()
    if not name:
        return None
    if name not in BACKENDS:
        raise ValueError(f"FASTADV_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _why_not_triton(device_type: str, kernel: Optional[str], f: Facts) -> tuple[str, str, str]:
    """(cause, reason, fix) of Triton not running ``kernel`` on ``device_type`` tensors."""
    failure = f.triton_failures.get((device_type, kernel)) if kernel else None
    if failure is not None:
        return ("triton-failed",
                f"its Triton kernel failed to compile or launch ({failure})",
                "see the full error with FASTADV_BACKEND=triton, and please report it")
    if f.triton_error is not None:
        return ("triton-missing", f"Triton is unavailable ({f.triton_error})",
                "install Triton (pip install triton, the version your torch pins)")
    return ("triton-interpreted",
            "TRITON_INTERPRET=1 was set when fastadv's Triton kernels were imported, and the "
            "interpreter would run CUDA tensors through host copies (orders of magnitude "
            "slower, no CUDA graph capture)",
            "unset TRITON_INTERPRET (it is for testing on the CPU)")


def _why_not_cuda_kernels(f: Facts) -> str:
    if f.extension_error is not None:
        return f"fastadv._C did not load ({f.extension_error})"
    return "fastadv._C was built without CUDA kernels"


@dataclass(frozen=True)
class Choice:
    """The backend for a kernel on a device type and, when it is below the best, why."""

    backend: str
    cause: Optional[tuple] = None  # what the warning is about, to give it once per process
    warning: Optional[str] = None


def plan(device_type: str, kernel: Optional[str], forced_name: Optional[str],
         f: Facts) -> Choice:
    """The backend ``kernel`` (any kernel when None) uses on ``device_type`` tensors given
    ``FASTADV_BACKEND=forced_name`` and the facts ``f``; a pure function. Raises
    RuntimeError when the forced backend cannot run there."""
    runnable = _runnable(device_type, f)
    if forced_name is not None:
        if forced_name not in runnable:
            why = ""
            if device_type == "cuda" and forced_name == "triton":
                why = f" ({_why_not_triton(device_type, None, f)[1]})"
            elif device_type == "cuda" and forced_name == "cuda":
                why = f" ({_why_not_cuda_kernels(f)})"
            raise RuntimeError(
                f"FASTADV_BACKEND={forced_name} cannot run on {device_type} tensors here{why}; "
                f"available: {', '.join(runnable)} (see `python -m fastadv.info`)")
        return Choice(forced_name)
    failed = kernel is not None and (device_type, kernel) in f.triton_failures
    backend = next(b for b in runnable if not (b == "triton" and failed))
    # Triton, or CUDA C++ where Triton is not installed, run CUDA tensors at full speed.
    full_speed = backend == "triton" or (backend == "cuda" and f.triton_error is not None)
    if not failed and (device_type != "cuda" or full_speed):
        return Choice(backend)
    cause, reason, fix = _why_not_triton(device_type, kernel, f)
    subject = f"{kernel} on {device_type} tensors uses" if failed else "CUDA tensors use"
    message = (f"fastadv: {subject} the '{backend}' backend ({_DETAIL[backend]}) instead of "
               f"Triton: {reason}")
    if backend == "torch" and device_type == "cuda":
        message += f", and {_why_not_cuda_kernels(f)}. To fix: {fix}, or {CUDA_BUILD_FIX}."
    else:
        message += f". To fix: {fix}."
    message += " `python -m fastadv.info` shows what this install has."
    key = (device_type, cause, kernel if failed else None, backend)
    return Choice(backend, key, message)


_DETAIL = {"torch": "the PyTorch reference: several kernels per step, much slower",
           "cuda": "CUDA C++ kernels", "cpp": "C++ kernels"}


_chosen: dict[tuple[str, Optional[str], Optional[str]], str] = {}
_warned: set[tuple] = set()


def select(device: torch.device | str, kernel: Optional[str] = None) -> str:
    """The backend that kernel ``kernel`` (``linf_step``, ``l2_step``, ``random_init``,
    ``keep_best``; None for the device's usual choice) uses for tensors on ``device``.
    Warns once per process and cause when that is below the best backend for the device."""
    try:  # the per-call path: one environment read, one dict lookup
        return _chosen[device.type, kernel, _getenv("FASTADV_BACKEND")]
    except (KeyError, AttributeError):  # not chosen yet, or device given as a string
        return _choose(_device_type(device), kernel)


_getenv = os.environ.get


def _choose(device_type: str, kernel: Optional[str]) -> str:
    key = (device_type, kernel, _getenv("FASTADV_BACKEND"))
    if key in _chosen:  # chosen before, for a device given as a string
        return _chosen[key]
    choice = plan(device_type, kernel, forced(), facts())
    if choice.warning is not None and choice.cause not in _warned:
        _warned.add(choice.cause)
        warnings.warn(choice.warning, BackendWarning, stacklevel=3)
    _chosen[key] = choice.backend
    return choice.backend


def explain(device: torch.device | str) -> Optional[str]:
    """Why ``device`` tensors run below the best backend (None when they do not); no warning."""
    try:
        return plan(_device_type(device), None, forced(), facts()).warning
    except (RuntimeError, ValueError) as exc:
        return str(exc)


def triton_failed(device: torch.device | str, kernel: str, error: BaseException) -> None:
    """Record that the Triton kernel ``kernel`` failed to compile or launch on ``device``:
    from now on it uses the next backend there (with one warning, at the next selection)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if len(text) > 600:  # Triton's compile errors quote the source first, the cause last
        text = f"{text[:200]} … {text[-400:]}"
    _triton_failures[(_device_type(device), kernel)] = text
    _chosen.clear()


def reset() -> None:
    """Forget cached choices, recorded Triton failures and warnings given (for tests)."""
    _chosen.clear()
    _warned.clear()
    _triton_failures.clear()
