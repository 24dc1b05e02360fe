"""The PGD step: l-inf (elementwise, one pass) and l2 (one program per example)."""

import triton
import triton.language as tl

from ._common import (CHANNEL, EXAMPLE, PARAMETER_POINTERS, channels_for, channels_of,
                      clamp_nan, combined_bounds, dummy_if_none, element_tensors, kinds_of,
                      parameter, parameter_pointer, per_channel, per_index)
from ._split import EDGE, aligned_split, programs, shifted
from ._traceable import launchable

LINF_BLOCK = 1024
# Two block sizes only (each is a compiled variant per dtype and parameter kind): examples
# shorter than L2_BLOCK loop over L2_SMALL_BLOCK lanes.
L2_BLOCK = 1024
L2_SMALL_BLOCK = 128


@triton.jit
def _linf_update(v0, g, xn, e, a, lo, hi, ORDER: tl.constexpr):
    """The step's update in rounding order ORDER (csrc/params.h's linf_update), in fp32:
    v0 is x (orders 0, 1) or the perturbation delta (2, 3). a*s is exact (+-a or +-0), so
    v0 + a*s is one rounding even where the compiler contracts it into an FMA."""
    s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))  # sign(NaN) = 0
    v = v0 + a * s
    if ORDER == 0:  # CLAMP: ball and range as one pair of bounds
        ball_lo, ball_hi = combined_bounds(xn, e, lo, hi)
        out = clamp_nan(v, ball_lo, ball_hi)
    elif ORDER == 1:  # IMAGE_VIA_DELTA: the delta into the ball, then the image into range
        out = clamp_nan(xn + clamp_nan(v - xn, -e, e), lo, hi)
    elif ORDER == 2:  # DELTA: the delta into the ball, then into the range shifted by x_nat
        out = clamp_nan(clamp_nan(v, -e, e), lo - xn, hi - xn)
    else:  # DELTA_VIA_IMAGE: the delta into the ball, the image into range, back to a delta
        out = clamp_nan(xn + clamp_nan(v, -e, e), lo, hi) - xn
    return out


@triton.jit
def _linf_block(
    x_ptr, grad_ptr, x_nat_ptr, start, lanes, count, g0,
    eps_ptr, eps_value, alpha_ptr, alpha_value,
    lower_ptr, lower_value, upper_ptr, upper_value,
    example_size, channel_div, channels,
    EPS_KIND: tl.constexpr, ALPHA_KIND: tl.constexpr, LOWER_KIND: tl.constexpr,
    UPPER_KIND: tl.constexpr, ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    """The step on `count` elements at x_ptr + start + lanes, flat elements g0 + lanes."""
    mask = lanes < count
    # fp32 math whatever the storage dtype (also sidesteps the interpreter's bf16 issues).
    x = tl.load(x_ptr + start + lanes, mask=mask).to(tl.float32)
    g = tl.load(grad_ptr + start + lanes, mask=mask).to(tl.float32)
    x_nat = tl.load(x_nat_ptr + start + lanes, mask=mask).to(tl.float32)
    eps = parameter(eps_ptr, eps_value, start, lanes, mask, g0, example_size, channel_div,
                    channels, EPS_KIND, BLOCK)
    alpha = parameter(alpha_ptr, alpha_value, start, lanes, mask, g0, example_size,
                      channel_div, channels, ALPHA_KIND, BLOCK)
    lower = parameter(lower_ptr, lower_value, start, lanes, mask, g0, example_size,
                      channel_div, channels, LOWER_KIND, BLOCK)
    upper = parameter(upper_ptr, upper_value, start, lanes, mask, g0, example_size,
                      channel_div, channels, UPPER_KIND, BLOCK)
    out = _linf_update(x, g, x_nat, eps, alpha, lower, upper, ORDER)
    tl.store(x_ptr + start + lanes, out.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["head", "tail", "tail_start", "example_size", "channel_div",
                               "channels"],
            do_not_specialize_on_alignment=PARAMETER_POINTERS)
def _linf_step_kernel(
    x_ptr, grad_ptr, x_nat_ptr,
    eps_ptr, eps_value, alpha_ptr, alpha_value,
    lower_ptr, lower_value, upper_ptr, upper_value,
    body_numel, head, tail, tail_start, example_size, channel_div, channels,
    EPS_KIND: tl.constexpr, ALPHA_KIND: tl.constexpr, LOWER_KIND: tl.constexpr,
    UPPER_KIND: tl.constexpr, ORDER: tl.constexpr, BLOCK: tl.constexpr, EDGE: tl.constexpr,
):
    # Pointers start at the aligned body (kernels/_split.py); the last program does the
    # head before it and the tail after it.
    pid = tl.program_id(0)
    full_blocks = body_numel // BLOCK  # (tl.cdiv's body_numel + BLOCK - 1 could overflow)
    if pid < full_blocks + (full_blocks * BLOCK < body_numel):
        start = pid.to(body_numel.dtype) * BLOCK
        _linf_block(x_ptr, grad_ptr, x_nat_ptr, start, tl.arange(0, BLOCK),
                    tl.minimum(body_numel - start, BLOCK).to(tl.int32), head + start,
                    eps_ptr, eps_value, alpha_ptr, alpha_value,
                    lower_ptr, lower_value, upper_ptr, upper_value,
                    example_size, channel_div, channels,
                    EPS_KIND, ALPHA_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)
    else:
        _linf_block(x_ptr, grad_ptr, x_nat_ptr, -head, tl.arange(0, EDGE), head, 0,
                    eps_ptr, eps_value, alpha_ptr, alpha_value,
                    lower_ptr, lower_value, upper_ptr, upper_value,
                    example_size, channel_div, channels,
                    EPS_KIND, ALPHA_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)
        _linf_block(x_ptr, grad_ptr, x_nat_ptr, body_numel, tl.arange(0, EDGE), tail,
                    tail_start,
                    eps_ptr, eps_value, alpha_ptr, alpha_value,
                    lower_ptr, lower_value, upper_ptr, upper_value,
                    example_size, channel_div, channels,
                    EPS_KIND, ALPHA_KIND, LOWER_KIND, UPPER_KIND, ORDER, BLOCK)


# Unused parameter pointers point at x_nat (x's dtype, never written), not at x: a tracer
# that cannot analyse the kernel assumes every pointer written, and x must stay one of a kind.
def linf_step(x, grad, x_nat, eps, eps_value, alpha, alpha_value, lower, lower_value,
              upper, upper_value, example_size, channel_div, kinds=(), order=0):
    numel = x.numel()
    if numel == 0:
        return
    params = (eps, alpha, lower, upper)
    kinds = kinds_of(kinds, params, (EXAMPLE, EXAMPLE, CHANNEL, CHANNEL))
    split = aligned_split(numel, (x, grad, x_nat) + element_tensors(params, kinds))
    eps, alpha, lower, upper = (parameter_pointer(t, kind, split.head, x_nat)
                                for t, kind in zip(params, kinds))
    launchable(_linf_step_kernel, x)[(programs(split, LINF_BLOCK),)](
        shifted(x, split.head), shifted(grad, split.head), shifted(x_nat, split.head),
        eps, eps_value, alpha, alpha_value, lower, lower_value, upper, upper_value,
        split.body, split.head, split.tail, split.head + split.body,
        example_size, channel_div, channels_for(numel, example_size, params, kinds),
        EPS_KIND=kinds[0], ALPHA_KIND=kinds[1], LOWER_KIND=kinds[2], UPPER_KIND=kinds[3],
        ORDER=int(order), BLOCK=LINF_BLOCK, EDGE=EDGE,
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


@triton.jit(do_not_specialize=["channel_div", "channels"],
            do_not_specialize_on_alignment=PARAMETER_POINTERS)
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
    x_ptr += base
    grad_ptr += base
    x_nat_ptr += base
    eps = per_index(eps_ptr, eps_value, example, True, PER_EXAMPLE_EPS)
    alpha = per_index(alpha_ptr, alpha_value, example, True, PER_EXAMPLE_ALPHA)
    lanes = tl.arange(0, BLOCK)

    grad_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, example_size, BLOCK):
        mask = start + lanes < example_size
        g = _finite(tl.load(grad_ptr + start + lanes, mask=mask, other=0.0).to(tl.float32))
        grad_sq += g * g
    # sqrt_rn and div_rn: correctly rounded like torch (tl.sqrt and / may approximate).
    grad_norm = tl.sqrt_rn(tl.sum(grad_sq, axis=0))
    factor = tl.where(grad_norm > 0,
                      tl.math.div_rn(alpha, tl.where(grad_norm > 0, grad_norm, 1.0)), 0.0)

    delta_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, example_size, BLOCK):
        mask = start + lanes < example_size
        v, x_nat = _stepped(x_ptr, grad_ptr, x_nat_ptr, start + lanes, mask, factor)
        d = v - x_nat
        delta_sq += tl.where(mask, d * d, 0.0)
    delta_norm = tl.sqrt_rn(tl.sum(delta_sq, axis=0))
    inside = delta_norm <= eps  # a NaN distance or eps projects, to NaN
    shrink = tl.where(inside, 1.0, tl.math.div_rn(eps, tl.where(delta_norm == 0, 1.0, delta_norm)))

    for start in range(0, example_size, BLOCK):
        mask = start + lanes < example_size
        v, x_nat = _stepped(x_ptr, grad_ptr, x_nat_ptr, start + lanes, mask, factor)
        out = tl.where(inside, v, x_nat + (v - x_nat) * shrink)
        lower = per_channel(lower_ptr, lower_value, base + start, lanes, mask, channel_div,
                            channels, PER_CHANNEL_LOWER, BLOCK)
        upper = per_channel(upper_ptr, upper_value, base + start, lanes, mask, channel_div,
                            channels, PER_CHANNEL_UPPER, BLOCK)
        out = clamp_nan(out, lower, upper)
        tl.store(x_ptr + start + lanes, out.to(x_ptr.dtype.element_ty), mask=mask)


def l2_step(x, grad, x_nat, eps, eps_value, alpha, alpha_value, lower, lower_value,
            upper, upper_value, example_size, channel_div):
    if x.numel() == 0:
        return
    grid = (x.numel() // example_size,)
    launchable(_l2_step_kernel, x)[grid](
        x, grad, x_nat,
        dummy_if_none(eps, x_nat), eps_value, dummy_if_none(alpha, x_nat), alpha_value,
        dummy_if_none(lower, x_nat), lower_value, dummy_if_none(upper, x_nat), upper_value,
        example_size, channel_div, channels_of(lower, upper),
        PER_EXAMPLE_EPS=eps is not None, PER_EXAMPLE_ALPHA=alpha is not None,
        PER_CHANNEL_LOWER=lower is not None, PER_CHANNEL_UPPER=upper is not None,
        BLOCK=L2_BLOCK if example_size >= L2_BLOCK else L2_SMALL_BLOCK,
        # x + g*factor and x_nat + delta*shrink rounded twice, as the reference and the
        # C++ kernels do: contracted to FMAs they differ in the last bit.
        enable_fp_fusion=False,
    )
