"""The PGD step: l-inf (elementwise, one pass) and l2 (one program per example)."""

import triton
import triton.language as tl

from ._common import channels_of, clamp_keep_nan, combined_bounds, dummy_if_none, per_index

LINF_BLOCK = 1024
L2_BLOCK = 1024


@triton.jit
def _linf_step_kernel(
    x_ptr, grad_ptr, x_nat_ptr,
    eps_ptr, eps_value, alpha_ptr, alpha_value,
    lower_ptr, lower_value, upper_ptr, upper_value,
    numel, example_size, channel_div, channels,
    PER_EXAMPLE_EPS: tl.constexpr, PER_EXAMPLE_ALPHA: tl.constexpr,
    PER_CHANNEL_LOWER: tl.constexpr, PER_CHANNEL_UPPER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    # fp32 math whatever the storage dtype (also sidesteps the interpreter's bf16 issues).
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    x_nat = tl.load(x_nat_ptr + offsets, mask=mask).to(tl.float32)
    example = offsets // example_size
    channel = (offsets // channel_div) % channels
    eps = per_index(eps_ptr, eps_value, example, mask, PER_EXAMPLE_EPS)
    alpha = per_index(alpha_ptr, alpha_value, example, mask, PER_EXAMPLE_ALPHA)
    lower = per_index(lower_ptr, lower_value, channel, mask, PER_CHANNEL_LOWER)
    upper = per_index(upper_ptr, upper_value, channel, mask, PER_CHANNEL_UPPER)

    step = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))  # sign(NaN) = 0
    lo, hi = combined_bounds(x_nat, eps, lower, upper)
    out = clamp_keep_nan(x + alpha * step, lo, hi)
    tl.store(x_ptr + offsets, out.to(x_ptr.dtype.element_ty), mask=mask)


def linf_step(x, grad, x_nat, eps, eps_value, alpha, alpha_value, lower, lower_value,
              upper, upper_value, example_size, channel_div):
    numel = x.numel()
    if numel == 0:
        return
    grid = (triton.cdiv(numel, LINF_BLOCK),)
    _linf_step_kernel[grid](
        x, grad, x_nat,
        dummy_if_none(eps, x), eps_value, dummy_if_none(alpha, x), alpha_value,
        dummy_if_none(lower, x), lower_value, dummy_if_none(upper, x), upper_value,
        numel, example_size, channel_div, channels_of(lower, upper),
        PER_EXAMPLE_EPS=eps is not None, PER_EXAMPLE_ALPHA=alpha is not None,
        PER_CHANNEL_LOWER=lower is not None, PER_CHANNEL_UPPER=upper is not None,
        BLOCK=LINF_BLOCK,
    )


@triton.jit
def _finite(g):
    return tl.where(g == g, g, 0.0)  # NaN gradient entries count as 0


@triton.jit
def _stepped(x_ptr, grad_ptr, x_nat_ptr, offsets, mask, factor):
    """x + g*factor (the unprojected step) and x_nat at `offsets`, in fp32."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = _finite(tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32))
    x_nat = tl.load(x_nat_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return x + g * factor, x_nat


@triton.jit
def _l2_step_kernel(
    x_ptr, grad_ptr, x_nat_ptr,
    eps_ptr, eps_value, alpha_ptr, alpha_value,
    lower_ptr, lower_value, upper_ptr, upper_value,
    example_size, channel_div, channels,
    PER_EXAMPLE_EPS: tl.constexpr, PER_EXAMPLE_ALPHA: tl.constexpr,
    PER_CHANNEL_LOWER: tl.constexpr, PER_CHANNEL_UPPER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per example: both norms are reductions over the whole example.
    example = tl.program_id(0).to(tl.int64)
    base = example * example_size
    eps = per_index(eps_ptr, eps_value, example, True, PER_EXAMPLE_EPS)
    alpha = per_index(alpha_ptr, alpha_value, example, True, PER_EXAMPLE_ALPHA)

    grad_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, example_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < example_size
        g = _finite(tl.load(grad_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32))
        grad_sq += g * g
    grad_norm = tl.sqrt(tl.sum(grad_sq, axis=0))
    factor = tl.where(grad_norm > 0, alpha / tl.where(grad_norm > 0, grad_norm, 1.0), 0.0)

    delta_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, example_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < example_size
        v, x_nat = _stepped(x_ptr, grad_ptr, x_nat_ptr, base + offsets, mask, factor)
        d = v - x_nat
        delta_sq += tl.where(mask, d * d, 0.0)
    delta_norm = tl.sqrt(tl.sum(delta_sq, axis=0))
    project = delta_norm > eps
    shrink = tl.where(project, eps / tl.where(delta_norm > 0, delta_norm, 1.0), 1.0)

    for start in range(0, example_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < example_size
        v, x_nat = _stepped(x_ptr, grad_ptr, x_nat_ptr, base + offsets, mask, factor)
        out = tl.where(project, x_nat + (v - x_nat) * shrink, v)
        channel = ((base + offsets) // channel_div) % channels
        lower = per_index(lower_ptr, lower_value, channel, mask, PER_CHANNEL_LOWER)
        upper = per_index(upper_ptr, upper_value, channel, mask, PER_CHANNEL_UPPER)
        out = clamp_keep_nan(out, lower, upper)
        tl.store(x_ptr + base + offsets, out.to(x_ptr.dtype.element_ty), mask=mask)


def l2_step(x, grad, x_nat, eps, eps_value, alpha, alpha_value, lower, lower_value,
            upper, upper_value, example_size, channel_div):
    if x.numel() == 0:
        return
    grid = (x.numel() // example_size,)
    _l2_step_kernel[grid](
        x, grad, x_nat,
        dummy_if_none(eps, x), eps_value, dummy_if_none(alpha, x), alpha_value,
        dummy_if_none(lower, x), lower_value, dummy_if_none(upper, x), upper_value,
        example_size, channel_div, channels_of(lower, upper),
        PER_EXAMPLE_EPS=eps is not None, PER_EXAMPLE_ALPHA=alpha is not None,
        PER_CHANNEL_LOWER=lower is not None, PER_CHANNEL_UPPER=upper is not None,
        BLOCK=min(L2_BLOCK, triton.next_power_of_2(example_size)),
    )
