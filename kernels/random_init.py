"""The random start: x_nat + eps*U(-1, 1), clamped, from Philox keyed by a device seed."""

import triton
import triton.language as tl

from ._common import (PARAMETER_POINTERS, channels_of, clamp_nan, combined_bounds,
                      dummy_if_none, per_channel, per_example)
from ._split import EDGE, aligned_split, programs, shifted

BLOCK_SIZE = 1024


@triton.jit
def _random_init_block(
    x_ptr, x_nat_ptr, seed, start, lanes, count, g0,
    eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
    example_size, channel_div, channels,
    PER_EXAMPLE_EPS: tl.constexpr, PER_CHANNEL_LOWER: tl.constexpr,
    PER_CHANNEL_UPPER: tl.constexpr, BLOCK: tl.constexpr,
):
    """The start of `count` elements at x_ptr + start + lanes, flat elements g0 + lanes."""
    mask = lanes < count
    x_nat = tl.load(x_nat_ptr + start + lanes, mask=mask).to(tl.float32)
    eps = per_example(eps_ptr, eps_value, g0, lanes, mask, example_size, PER_EXAMPLE_EPS, BLOCK)
    lower = per_channel(lower_ptr, lower_value, g0, lanes, mask, channel_div, channels,
                        PER_CHANNEL_LOWER, BLOCK)
    upper = per_channel(upper_ptr, upper_value, g0, lanes, mask, channel_div, channels,
                        PER_CHANNEL_UPPER, BLOCK)

    # Philox4x32-10, counter = walk position (its high word is 0 below 2**31 elements,
    # where g0 is int32; reference.philox_first_word splits it the same way).
    bits = tl.randint(seed, g0 + lanes)
    noise = (bits >> 8).to(tl.float32) * 5.9604644775390625e-08 * 2.0 - 1.0
    lo, hi = combined_bounds(x_nat, eps, lower, upper)
    out = clamp_nan(x_nat + eps * noise, lo, hi)
    tl.store(x_ptr + start + lanes, out.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["head", "tail", "tail_start", "example_size", "channel_div",
                               "channels"],
            do_not_specialize_on_alignment=PARAMETER_POINTERS)
def _random_init_kernel(
    x_ptr, x_nat_ptr, seed_ptr,
    eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
    body_numel, head, tail, tail_start, example_size, channel_div, channels,
    PER_EXAMPLE_EPS: tl.constexpr, PER_CHANNEL_LOWER: tl.constexpr,
    PER_CHANNEL_UPPER: tl.constexpr, BLOCK: tl.constexpr, EDGE: tl.constexpr,
):
    # The seed is read on the device, so a CUDA graph replays with a fresh seed each time.
    seed = tl.load(seed_ptr)
    # Pointers start at the aligned body (kernels/_split.py); the last program does the
    # head before it and the tail after it.
    pid = tl.program_id(0)
    full_blocks = body_numel // BLOCK  # (tl.cdiv's body_numel + BLOCK - 1 could overflow)
    if pid < full_blocks + (full_blocks * BLOCK < body_numel):
        start = pid.to(body_numel.dtype) * BLOCK
        _random_init_block(x_ptr, x_nat_ptr, seed, start, tl.arange(0, BLOCK),
                           tl.minimum(body_numel - start, BLOCK).to(tl.int32), head + start,
                           eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
                           example_size, channel_div, channels,
                           PER_EXAMPLE_EPS, PER_CHANNEL_LOWER, PER_CHANNEL_UPPER, BLOCK)
    else:
        _random_init_block(x_ptr, x_nat_ptr, seed, -head, tl.arange(0, EDGE), head, 0,
                           eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
                           example_size, channel_div, channels,
                           PER_EXAMPLE_EPS, PER_CHANNEL_LOWER, PER_CHANNEL_UPPER, BLOCK)
        _random_init_block(x_ptr, x_nat_ptr, seed, body_numel, tl.arange(0, EDGE), tail,
                           tail_start,
                           eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
                           example_size, channel_div, channels,
                           PER_EXAMPLE_EPS, PER_CHANNEL_LOWER, PER_CHANNEL_UPPER, BLOCK)


def random_init(x, x_nat, seed, eps, eps_value, lower, lower_value, upper, upper_value,
                example_size, channel_div):
    numel = x.numel()
    if numel == 0:
        return
    split = aligned_split(numel, (x, x_nat))
    _random_init_kernel[(programs(split, BLOCK_SIZE),)](
        shifted(x, split.head), shifted(x_nat, split.head), seed,
        dummy_if_none(eps, x), eps_value, dummy_if_none(lower, x), lower_value,
        dummy_if_none(upper, x), upper_value,
        split.body, split.head, split.tail, split.head + split.body,
        example_size, channel_div, channels_of(lower, upper),
        PER_EXAMPLE_EPS=eps is not None, PER_CHANNEL_LOWER=lower is not None,
        PER_CHANNEL_UPPER=upper is not None, BLOCK=BLOCK_SIZE, EDGE=EDGE,
        enable_fp_fusion=False,  # x_nat + eps*noise rounded twice, as the other backends do
    )
