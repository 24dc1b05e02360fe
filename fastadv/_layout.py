"""Memory layouts the kernels can walk flat: dense, non-overlapping, batch outermost."""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill exactly numel consecutive slots of memory (any order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b (same shape) lay their elements out in the same order."""
    if a.stride() == b.stride():
        return True
    return all(sa == sb for sz, sa, sb in zip(a.shape, a.stride(), b.stride()) if sz != 1)


def flat_layout(t: torch.Tensor) -> tuple[int, int] | None:
    """``(example_size, channel_div)`` when t can be walked flat in memory order with the
    batch dimension outermost: element i belongs to example ``i // example_size`` and channel
    ``(i // channel_div) % C``. None when it cannot (the caller copies to a dense layout)."""
    if t.dim() == 0:
        return None
    batch = t.shape[0]
    if t.is_contiguous():  # the common case, without the general stride analysis
        # Where dim 1 holds at most one element its stride is any (even 0): every element is
        # then in channel 0, and channel_div 1 says so within the kernels' rules.
        numel = t.numel()
        channel_div = t.stride(1) if t.dim() > 1 and t.shape[1] > 1 and numel else 1
        return max(numel // batch if batch else 1, 1), channel_div
    if not is_dense(t):
        return None
    example_size = t.numel() // batch if batch else 1
    if batch > 1 and t.stride(0) != example_size:
        return None
    channel_div = t.stride(1) if t.dim() > 1 and t.shape[1] > 1 else 1
    return max(example_size, 1), channel_div


def memory_order_index(t: torch.Tensor) -> torch.Tensor:
    """For each element of t, its position in the order the kernels walk t: memory order
    when they can walk t flat (``flat_layout``), row-major order otherwise (they then work on
    a contiguous copy: dense layouts with the batch not outermost included)."""
    flat = torch.arange(t.numel(), dtype=torch.int64, device=t.device)
    if flat_layout(t) is not None:
        return torch.as_strided(flat, t.shape, t.stride())
    return flat.view(t.shape)
