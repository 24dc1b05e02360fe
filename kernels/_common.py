"""Pieces the Triton kernels share: per-index parameters and the one-clamp projection."""

import triton
import triton.language as tl


@triton.jit
def per_index(values_ptr, value, index, mask, VARIES: tl.constexpr):
    """values[index] when VARIES (an fp32 tensor per example or per channel), else value."""
    if VARIES:
        return tl.load(values_ptr + index, mask=mask, other=0.0)
    return value


@triton.jit
def clamp_keep_nan(v, lo, hi):
    """min(max(v, lo), hi) keeping a NaN v as NaN, like torch.clamp."""
    v = tl.where(v < lo, lo, v)
    return tl.where(v > hi, hi, v)


@triton.jit
def combined_bounds(x_nat, eps, lower, upper):
    """max(lower, x_nat - eps), min(upper, x_nat + eps): the ball and the valid range."""
    lo = x_nat - eps
    hi = x_nat + eps
    return tl.where(lo > lower, lo, lower), tl.where(hi < upper, hi, upper)


def dummy_if_none(t, fallback):
    """Triton needs a pointer for every pointer argument; unused ones get `fallback`."""
    return fallback if t is None else t


def channels_of(lower, upper):
    for t in (lower, upper):
        if t is not None:
            return t.numel()
    return 1
