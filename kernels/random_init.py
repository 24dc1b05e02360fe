"""The random start: x_nat + eps*U(-1, 1), clamped, from Philox keyed by a device seed."""

import triton
import triton.language as tl

from ._common import (CHANNEL, EXAMPLE, PARAMETER_POINTERS, channels_for, clamp_nan,
                      combined_bounds, element_tensors, kinds_of, parameter, parameter_pointer)
from ._split import EDGE, aligned_split, programs, shifted

BLOCK_SIZE = 1024


@triton.jit
def _random_update(xn, e, u, lo, hi, ORDER: tl.constexpr):
    """The start in rounding order ORDER (csrc/params.h's random_update), in fp32, from the
    noise e*u (rounded once: the launch turns FMA contraction off)."""
    noise = e * u
    if ORDER == 2:  # DELTA: the noise into the range shifted by x_nat
        out = clamp_nan(noise, lo - xn, hi - xn)
    elif ORDER == 3:  # DELTA_VIA_IMAGE: the image into range, back to a delta
        out = clamp_nan(xn + noise, lo, hi) - xn
    else:  # CLAMP, and IMAGE_VIA_DELTA, whose start the contract makes the same
        ball_lo, ball_hi = combined_bounds(xn, e, lo, hi)
        out = clamp_nan(xn + noise, ball_lo, ball_hi)
    return out


@triton.jit
def _random_init_block(
    x_ptr, x_nat_ptr, seed, start, lanes, count, g0,
    eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
    example_size, channel_div, channels,
    EPS_KIND: tl.constexpr, LOWER_KIND: tl.constexpr, UPPER_KIND: tl.constexpr,
    ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    """The start of `count` elements at x_ptr + start + lanes, flat elements g0 + lanes."""
    mask = lanes < count
    x_nat = tl.load(x_nat_ptr + start + lanes, mask=mask).to(tl.float32)
    eps = parameter(eps_ptr, eps_value, start, lanes, mask, g0, example_size, channel_div,
                    channels, EPS_KIND, BLOCK)
    lower = parameter(lower_ptr, lower_value, start, lanes, mask, g0, example_size,
                      channel_div, channels, LOWER_KIND, BLOCK)
    upper = parameter(upper_ptr, upper_value, start, lanes, mask, g0, example_size,
                      channel_div, channels, UPPER_KIND, BLOCK)

    # Philox4x32-10, counter = walk position (its high word is 0 below 2**31 elements,
    # where g0 is int32; reference.philox_first_word splits it the same way).
    bits = tl.randint(seed, g0 + lanes)
    noise = (bits >> 8).to(tl.float32) * 5.9604644775390625e-08 * 2.0 - 1.0
    out = _random_update(x_nat, eps, noise, lower, upper, ORDER)
    tl.store(x_ptr + start + lanes, out.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["head", "tail", "tail_start", "example_size", "channel_div",
                               "channels"],
            do_not_specialize_on_alignment=PARAMETER_POINTERS)
def _random_init_kernel(
    x_ptr, x_nat_ptr, seed_ptr,
    eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
    body_numel, head, tail, tail_start, example_size, channel_div, channels,
    EPS_KIND: tl.constexpr, LOWER_KIND: tl.constexpr, UPPER_KIND: tl.constexpr,
    ORDER: tl.constexpr, BLOCK: tl.constexpr, EDGE: tl.constexpr,
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
                           EPS_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)
    else:
        _random_init_block(x_ptr, x_nat_ptr, seed, -head, tl.arange(0, EDGE), head, 0,
                           eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
                           example_size, channel_div, channels,
                           EPS_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)
        _random_init_block(x_ptr, x_nat_ptr, seed, body_numel, tl.arange(0, EDGE), tail,
                           tail_start,
                           eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
                           example_size, channel_div, channels,
                           EPS_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)


def random_init(x, x_nat, seed, eps, eps_value, lower, lower_value, upper, upper_value,
                example_size, channel_div, kinds=(), order=0):
    numel = x.numel()
    if numel == 0:
        return
    params = (eps, lower, upper)
    kinds = kinds_of(kinds, params, (EXAMPLE, CHANNEL, CHANNEL))
    split = aligned_split(numel, (x, x_nat) + element_tensors(params, kinds))
    eps, lower, upper = (parameter_pointer(t, kind, split.head, x)
                         for t, kind in zip(params, kinds))
    _random_init_kernel[(programs(split, BLOCK_SIZE),)](
        shifted(x, split.head), shifted(x_nat, split.head), seed,
        eps, eps_value, lower, lower_value, upper, upper_value,
        split.body, split.head, split.tail, split.head + split.body,
        example_size, channel_div, channels_for(numel, example_size, params, kinds),
        EPS_KIND=kinds[0], LOWER_KIND=kinds[1], UPPER_KIND=kinds[2],
        # Order 1 starts as order 0 (the contract): one compiled variant for both.
        ORDER=0 if order == 1 else int(order), BLOCK=BLOCK_SIZE, EDGE=EDGE,
        enable_fp_fusion=False,  # x_nat + eps*noise rounded twice, as the other backends do
    )
