"""The random start: x_nat + eps*U(-1, 1), clamped, from Philox keyed by a device seed."""

import triton
import triton.language as tl

from ._common import channels_of, clamp_keep_nan, combined_bounds, dummy_if_none, per_index

BLOCK_SIZE = 1024


@triton.jit
def _random_init_kernel(
    x_ptr, x_nat_ptr, seed_ptr,
    eps_ptr, eps_value, lower_ptr, lower_value, upper_ptr, upper_value,
    numel, example_size, channel_div, channels,
    PER_EXAMPLE_EPS: tl.constexpr, PER_CHANNEL_LOWER: tl.constexpr,
    PER_CHANNEL_UPPER: tl.constexpr, BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x_nat = tl.load(x_nat_ptr + offsets, mask=mask).to(tl.float32)
    eps = per_index(eps_ptr, eps_value, offsets // example_size, mask, PER_EXAMPLE_EPS)
    channel = (offsets // channel_div) % channels
    lower = per_index(lower_ptr, lower_value, channel, mask, PER_CHANNEL_LOWER)
    upper = per_index(upper_ptr, upper_value, channel, mask, PER_CHANNEL_UPPER)

    # The seed is read on the device, so a CUDA graph replays with a fresh seed each time.
    seed = tl.load(seed_ptr)
    bits = tl.randint(seed, offsets)  # Philox4x32-10, counter = walk position
    noise = (bits >> 8).to(tl.float32) * 5.9604644775390625e-08 * 2.0 - 1.0
    lo, hi = combined_bounds(x_nat, eps, lower, upper)
    out = clamp_keep_nan(x_nat + eps * noise, lo, hi)
    tl.store(x_ptr + offsets, out.to(x_ptr.dtype.element_ty), mask=mask)


def random_init(x, x_nat, seed, eps, eps_value, lower, lower_value, upper, upper_value,
                example_size, channel_div):
    numel = x.numel()
    if numel == 0:
        return
    _random_init_kernel[(triton.cdiv(numel, BLOCK_SIZE),)](
        x, x_nat, seed,
        dummy_if_none(eps, x), eps_value, dummy_if_none(lower, x), lower_value,
        dummy_if_none(upper, x), upper_value,
        numel, example_size, channel_div, channels_of(lower, upper),
        PER_EXAMPLE_EPS=eps is not None, PER_CHANNEL_LOWER=lower is not None,
        PER_CHANNEL_UPPER=upper is not None, BLOCK=BLOCK_SIZE,
        enable_fp_fusion=False,  # x_nat + eps*noise rounded twice, as the other backends do
    )
