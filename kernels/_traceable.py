"""Launching a kernel so that torch.compile can trace the launch.

A launch from eager code runs the kernel directly. A launch while a tracer runs the op's
body (torch.compile's AOT tracing decomposes ``fastadv::_pgd_triton_``, make_fx, fake
tensors) goes through ``torch.library.wrap_triton`` (torch >= 2.6): the tracer records a
``triton_kernel_wrapper_*`` node that Inductor compiles and schedules like its own kernels,
where the opaque custom op would hide it.
"""

from __future__ import annotations

import torch


def tracing(x: torch.Tensor) -> bool:
    """True when x is a tracer's tensor (fake, functional, proxied): no memory to read."""
    return type(x) is not torch.Tensor or torch._C._len_torch_dispatch_stack() > 0


def launchable(kernel, x: torch.Tensor):
    """``kernel``, or its traceable wrapper while a tracer runs (and torch has one)."""
    if not tracing(x):
        return kernel
    wrap = getattr(torch.library, "wrap_triton", None)
    return kernel if wrap is None else wrap(kernel)
