"""Pieces the Triton kernels share: per-index parameters, cheap block index math and the
NaN-propagating one-clamp projection."""

import triton
import triton.language as tl

from ._split import shifted

# Per-element quotients are taken in fp32 (`_small_floor_div`), exact only for dividends
# below 2 * MAX_BLOCK and divisors up to MAX_BLOCK (tests/test_triton_kernels.py checks
# every such pair).
MAX_BLOCK = 2048

# Pointers to the parameters (a table, an ELEMENT tensor or a dummy). Tables are only
# gathered from, so their alignment would only multiply the compiled variants; ELEMENT
# tensors are streamed like x, but for the same reason in 32-bit (still coalesced) loads.
PARAMETER_POINTERS = ["eps_ptr", "alpha_ptr", "lower_ptr", "upper_ptr"]

# How a parameter of the l-inf step and the random start is indexed at flat element i of the
# walk (the kernel ops' `kinds`, csrc/params.h's Kind): a value; t[example]; t[channel];
# t[example * channels + channel]; t[i], a tensor laid out like x.
SCALAR, EXAMPLE, CHANNEL, EXAMPLE_CHANNEL, ELEMENT = range(5)


@triton.jit
def per_index(values_ptr, value, index, mask, VARIES: tl.constexpr):
    """values[index] when VARIES (an fp32 tensor per example or per channel), else value.

    One return statement: the compiler checks every return of a function against the
    first, and a loaded block and a scalar do not match."""
    if VARIES:
        result = tl.load(values_ptr + index, mask=mask, other=0.0)
    else:
        result = value
    return result


@triton.jit
def _small_floor_div(n, d):
    """n // d for int32 blocks n in [0, 2*MAX_BLOCK) and a scalar d in [1, MAX_BLOCK], in a
    multiply and two conversions instead of an integer division (~20 instructions on a GPU;
    64-bit ~70). The reciprocal (once per program) is rounded up by 4 ulps, which keeps
    n * r at or above each integer quotient and below the next one for these ranges (exact
    even for a reciprocal 2 ulps off; div_rn gives the correctly rounded one)."""
    r = tl.math.div_rn(1.0, d.to(tl.float32))
    r = (r.to(tl.int32, bitcast=True) + 4).to(tl.float32, bitcast=True)
    return (n.to(tl.float32) * r).to(tl.int32)


@triton.jit
def _block_quotient(g0, lanes, d, BLOCK: tl.constexpr):
    """(g0 + lanes) // d as q0 + k: q0 = g0 // d once per program (g0's integer type), k an
    int32 block. Valid for lanes in [0, BLOCK) and any d >= 1: d is clipped to BLOCK, and
    with a divisor that large at most one boundary falls in the block."""
    tl.static_assert(BLOCK <= 2048, "BLOCK above MAX_BLOCK: _small_floor_div is not exact")
    q0 = g0 // d
    dc = tl.minimum(d, BLOCK)
    shift = tl.maximum(dc - d + (g0 - q0 * d), 0)  # in [0, dc)
    return q0, _small_floor_div(lanes + shift.to(tl.int32), dc.to(tl.int32))


@triton.jit
def example_index(g0, lanes, example_size, BLOCK: tl.constexpr):
    """The example of flat elements g0 + lanes (lanes an int32 block in [0, BLOCK))."""
    e0, k = _block_quotient(g0, lanes, example_size, BLOCK)
    return e0 + k


@triton.jit
def channel_index(g0, lanes, channel_div, channels, BLOCK: tl.constexpr):
    """The channel ((g0 + lanes) // channel_div) % channels of flat elements g0 + lanes."""
    q0, j = _block_quotient(g0, lanes, channel_div, BLOCK)  # j in [0, BLOCK)
    c0 = q0 % channels
    # (c0 + j) // channels with c0 < channels: the same clipping as in _block_quotient.
    cc = tl.minimum(channels, BLOCK)
    shift = tl.maximum(cc - channels + c0, 0)
    wraps = _small_floor_div(j + shift.to(tl.int32), cc.to(tl.int32))
    return c0 + (j - wraps * channels)


@triton.jit
def parameter(ptr, value, start, lanes, mask, g0, example_size, channel_div, channels,
              KIND: tl.constexpr, BLOCK: tl.constexpr):
    """The value of a parameter of kind KIND (SCALAR..ELEMENT above: 0..4) at flat elements
    g0 + lanes, which lie at start + lanes from x_ptr. Only the indices its kind needs are
    computed (the compiler merges those several parameters share); an ELEMENT tensor is
    read at x's offsets, so the launcher shifts it with x."""
    if KIND == 0:  # SCALAR
        result = value
    elif KIND == 4:  # ELEMENT
        result = tl.load(ptr + start + lanes, mask=mask).to(tl.float32)
    else:
        if KIND == 1:  # EXAMPLE
            index = example_index(g0, lanes, example_size, BLOCK)
        elif KIND == 2:  # CHANNEL
            index = channel_index(g0, lanes, channel_div, channels, BLOCK)
        else:  # EXAMPLE_CHANNEL
            index = (example_index(g0, lanes, example_size, BLOCK) * channels
                     + channel_index(g0, lanes, channel_div, channels, BLOCK))
        result = tl.load(ptr + index, mask=mask, other=0.0)
    return result


@triton.jit
def per_channel(values_ptr, value, g0, lanes, mask, channel_div, channels,
                VARIES: tl.constexpr, BLOCK: tl.constexpr):
    """per_index for flat elements g0 + lanes, indexed by their channel."""
    if VARIES:
        channel = channel_index(g0, lanes, channel_div, channels, BLOCK)
        result = tl.load(values_ptr + channel, mask=mask, other=0.0)
    else:
        result = value
    return result


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min_nan(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def clamp_nan(v, lo, hi):
    """min(max(v, lo), hi) with a NaN in any of them giving NaN, like the reference's
    torch.maximum/minimum (max.NaN/min.NaN on the GPU)."""
    return _min_nan(_max_nan(v, lo), hi)


@triton.jit
def combined_bounds(x_nat, eps, lower, upper):
    """max(lower, x_nat - eps), min(upper, x_nat + eps): the ball and the valid range; a NaN
    x_nat, eps or bound gives NaN bounds (and so a NaN result), as in the reference."""
    return _max_nan(x_nat - eps, lower), _min_nan(x_nat + eps, upper)


def dummy_if_none(t, fallback):
    """Triton needs a pointer for every pointer argument; unused ones get `fallback`."""
    return fallback if t is None else t


def channels_of(lower, upper):
    """The channel count of the l2 step's per-channel bounds (1 without any)."""
    for t in (lower, upper):
        if t is not None:
            return t.numel()
    return 1


def kinds_of(kinds, tensors, legacy):
    """The kind of each parameter: `kinds` when given, else the old rule (kinds=[]): kind
    `legacy` where a tensor is given, SCALAR where not."""
    if len(kinds) == 0:
        return tuple(SCALAR if t is None else k for t, k in zip(tensors, legacy))
    return tuple(int(k) for k in kinds)


def channels_for(numel, example_size, tensors, kinds):
    """`channels` of a launch: a CHANNEL table's length, or an EXAMPLE_CHANNEL table's
    length over the examples (the checks make them agree), else 1."""
    for t, kind in zip(tensors, kinds):
        if kind == CHANNEL:
            return t.numel()
        if kind == EXAMPLE_CHANNEL:
            return t.numel() // (numel // example_size)
    return 1


def element_tensors(tensors, kinds):
    """The ELEMENT-kind tensors: walked like x, so they take part in the aligned split."""
    return tuple(t for t, kind in zip(tensors, kinds) if kind == ELEMENT)


def parameter_pointer(t, kind, head, dummy):
    """What the kernel gets for a parameter: `dummy` for a SCALAR (Triton needs a pointer),
    an ELEMENT tensor from the split's head on like x, a table as it is."""
    if kind == SCALAR:
        return dummy
    return shifted(t, head) if kind == ELEMENT else t
