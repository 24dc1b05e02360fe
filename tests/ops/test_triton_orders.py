"""The Triton launchers' parameter kinds and rounding orders (the issue 26 kernel contract),
bit for bit against the contract's formulas written here in plain PyTorch (fp32: loads
upcast, torch.maximum/minimum, one rounding to x's dtype at the end).

The launchers are called directly (no op layer, no checks): every order, every kind for
every parameter, layouts the launchers walk flat (contiguous, channels_last, a permuted
dense one), x in fp32/bf16/fp16 with grad in another dtype, odd shapes, views offset alike
(an aligned head to shift by) and offset apart, NaN gradients, NaN and infinite parameters.
Without a GPU they run in Triton's interpreter (tests/conftest.py switches it on), on a GPU
on CUDA tensors.

Two things the comparison allows, both outside the contract's bits:
- a zero of either sign equals a zero: the contract does not say which of +0 and -0
  min/max return (torch and csrc/params.h return the first argument; the interpreter's
  numpy returns the second or the first depending on its code path, a GPU its own rule);
- the interpreter stores bf16 by truncating the fp32 result (a GPU rounds to nearest even),
  so under it bf16 is compared with the truncated formula, still bit for bit."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from fastadv._layout import flat_layout, memory_order_index  # noqa: E402
from fastadv.reference import philox_first_word, uniform_minus_one_one  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
pytestmark = [
    pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                       reason="Triton runs neither on a GPU nor in its interpreter here"),
    # inf * 0 (an infinite alpha with a zero sign) in the interpreter's numpy: NaN, as meant
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
if INTERPRETED or torch.cuda.is_available():
    from fastadv import kernels

SCALAR, EXAMPLE, CHANNEL, EXAMPLE_CHANNEL, ELEMENT = range(5)
NAN, INF = float("nan"), float("inf")
ORDERS = range(4)
# x's dtype and grad's (the sign is all the step reads of grad).
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float16),
               (torch.float16, torch.bfloat16)]


def kind_rows(params):
    """A Latin square: in its 5 rows every parameter takes every kind once, next to others."""
    return [tuple((k + j) % 5 for j in range(params)) for k in range(5)]


# --------------------------------------------------------------------------- layouts

# Memory order of the dims (outermost first); the batch stays outermost, so the launchers
# walk each of these flat.
DIM_ORDERS = {"contiguous": None, "channels_last": (0, 2, 3, 1), "permuted": (0, 3, 1, 2)}


def placed(values, layout="contiguous", offset=0, dtype=None):
    """`values` in `layout`, starting `offset` elements into a fresh allocation (not 16-byte
    aligned unless offset * element size is a multiple of 16)."""
    dtype = dtype or values.dtype
    shape = values.shape
    order = DIM_ORDERS[layout] or tuple(range(len(shape)))
    strides = [0] * len(shape)
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    buf = torch.empty(values.numel() + offset, dtype=dtype, device=DEVICE)
    view = buf.as_strided(shape, strides, offset)
    view.copy_(values)
    return view


def like(t, values, offset=0):
    """An fp32 ELEMENT tensor laid out like t (same strides), `offset` into its allocation."""
    buf = torch.empty(t.numel() + offset, dtype=torch.float32, device=DEVICE)
    view = buf.as_strided(t.shape, t.stride(), offset)
    view.copy_(values)
    return view


# --------------------------------------------------------------------------- parameters


class Geometry:
    """example_size and channel_div as fastadv/_layout.py's flat_layout computes them for x,
    `channels` channels, and each element's walk position."""

    def __init__(self, x, channels):
        self.example_size, self.channel_div = flat_layout(x)
        self.examples = x.numel() // self.example_size
        self.channels = channels
        self.walk = memory_order_index(x).to(DEVICE)


def table(kind, geo, draw):
    """The launcher's tensor for `kind` (None for SCALAR) with values from draw(n)."""
    n = {EXAMPLE: geo.examples, CHANNEL: geo.channels,
         EXAMPLE_CHANNEL: geo.examples * geo.channels}.get(kind)
    return None if n is None else draw(n).to(DEVICE)


def per_element(kind, t, value, geo, x, element_values):
    """The contract's value of a parameter at each element of x (x's logical shape)."""
    i = geo.walk
    if kind == SCALAR:
        return torch.full(x.shape, value, dtype=torch.float32, device=DEVICE)
    if kind == ELEMENT:
        return element_values
    example = i // geo.example_size
    channel = (i // geo.channel_div) % geo.channels
    index = {EXAMPLE: example, CHANNEL: channel,
             EXAMPLE_CHANNEL: example * geo.channels + channel}[kind]
    return t[index]


class Param:
    """One parameter of a launch: what the launcher gets and its value at each element."""

    def __init__(self, kind, value, draw, geo, x, elem_offset=0):
        self.kind, self.value = kind, value
        if kind == ELEMENT:
            values = draw(x.numel()).view(x.shape).to(DEVICE)
            self.tensor = like(x, values, elem_offset)
        else:
            values = None
            self.tensor = table(kind, geo, draw)
        self.at = per_element(kind, self.tensor, value, geo, x, values)

    def args(self):
        return self.tensor, self.value


def uniform(lo, hi, gen, specials=()):
    """n values in [lo, hi), the first of them replaced by `specials`."""
    def draw(n):
        values = lo + (hi - lo) * torch.rand(n, generator=gen)
        m = min(len(specials), n)
        values[:m] = torch.tensor(specials[:m], dtype=torch.float32)
        return values
    return draw


# --------------------------------------------------------------------------- the contract


def clamp(v, lo, hi):
    return torch.minimum(torch.maximum(v, lo), hi)


def spec_step(order, v0, g, xn, e, a, lo, hi):
    """The contract's l-inf step, fp32 tensors in, fp32 out."""
    s = (g > 0).float() - (g < 0).float()  # sign(0) = sign(NaN) = 0
    v = v0 + a * s
    if order == 0:
        return clamp(v, torch.maximum(xn - e, lo), torch.minimum(xn + e, hi))
    if order == 1:
        return clamp(xn + clamp(v - xn, -e, e), lo, hi)
    if order == 2:
        return clamp(clamp(v, -e, e), lo - xn, hi - xn)
    return clamp(xn + clamp(v, -e, e), lo, hi) - xn


def spec_random(order, xn, e, u, lo, hi):
    """The contract's random start, fp32 tensors in, fp32 out."""
    n = e * u
    if order in (0, 1):
        return clamp(xn + n, torch.maximum(xn - e, lo), torch.minimum(xn + e, hi))
    if order == 2:
        return clamp(n, lo - xn, hi - xn)
    return clamp(xn + n, lo, hi) - xn


def stored(want, dtype):
    """want (fp32) as the kernel stores it in `dtype`."""
    if dtype == torch.bfloat16 and INTERPRETED:  # the interpreter truncates to bf16
        bits = (want.contiguous().view(torch.int32) >> 16).to(torch.int16)
        return bits.view(torch.bfloat16).view(want.shape)
    return want.to(dtype)


INT_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_bits(out, want_fp32, msg):
    """out equals the formula's fp32 result stored in out's dtype, bit for bit (NaN where it
    is NaN, zeros of either sign alike)."""
    want = stored(want_fp32, out.dtype)
    out = out.contiguous()
    nan_out, nan_want = torch.isnan(out), torch.isnan(want)
    assert torch.equal(nan_out, nan_want), (
        f"{msg}: NaN at {int((nan_out != nan_want).sum())} positions where the formula has "
        f"none, or the reverse")
    same = (out.view(INT_OF[out.dtype]) == want.view(INT_OF[out.dtype])) | nan_out
    same |= (out == 0) & (want == 0)
    if not same.all():
        idx = tuple(int(i) for i in (~same).nonzero()[0])
        raise AssertionError(
            f"{msg}: {int((~same).sum())} of {out.numel()} elements differ; first at {idx}: "
            f"kernel {out[idx].item()!r} formula {want[idx].item()!r} "
            f"(fp32 {want_fp32[idx].item()!r})")


# --------------------------------------------------------------------------- the step


STEP_DRAWS = {  # (scalar value, table/element values): eps, alpha, lower, upper
    "eps": (8 / 255, (0.0, 0.3)),
    "alpha": (2 / 255, (-0.03, 0.1)),
    "lower": (0.05, (-0.05, 0.3)),
    "upper": (0.9, (0.7, 1.05)),
}


def step_case(shape, layout, dtype, grad_dtype, kinds, order, *, x_offset=0, other_offset=0,
              elem_offset=None, seed=0, nan_params=False, legacy=False):
    """Runs linf_step once and compares it with spec_step."""
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    if order < 2:  # x: an image, partly outside the valid range
        v0 = x_nat + 0.2 * torch.randn(shape, generator=gen)
    else:  # delta: a perturbation, partly outside the ball
        v0 = 0.15 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    flat_grad = grad.view(-1)
    flat_grad[::13] = NAN  # sign 0
    flat_grad[5::17] = 0.0
    if nan_params:
        x_nat.view(-1)[3::29] = NAN
        v0.view(-1)[7::31] = NAN

    x = placed(v0, layout, x_offset, dtype)
    g = placed(grad, layout, other_offset, grad_dtype)
    n = placed(x_nat, layout, other_offset, dtype)
    channels = shape[1] if len(shape) > 1 else 1
    geo = Geometry(x, channels)
    elem_offset = other_offset if elem_offset is None else elem_offset
    params = []
    for name, kind in zip(STEP_DRAWS, kinds):
        value, (lo, hi) = STEP_DRAWS[name]
        specials = (NAN, 0.0, -0.0, INF, -INF) if nan_params else ()
        params.append(Param(kind, value, uniform(lo, hi, gen, specials), geo, x, elem_offset))

    want = spec_step(order, x.float(), g.float(), n.float(), *(p.at for p in params))
    args = [a for p in params for a in p.args()]
    extra = () if legacy else (list(kinds), order)
    kernels.linf_step(x, g, n, *args, geo.example_size, geo.channel_div, *extra)
    assert_bits(x, want, f"linf_step {shape} {layout} {dtype}/{grad_dtype} kinds={kinds} "
                           f"order={order} offsets={x_offset}/{other_offset}/{elem_offset}")


@pytest.mark.parametrize("dtype,grad_dtype", DTYPE_PAIRS, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layout", list(DIM_ORDERS))
@pytest.mark.parametrize("order", ORDERS)
def test_linf_step_every_order_and_kind(order, layout, dtype, grad_dtype):
    """Every kind for each of eps, alpha, lower, upper (the rows of a Latin square), in each
    order, layout and dtype; the odd shape gives a body, a tail and blocks that cross
    example and channel boundaries."""
    for seed, kinds in enumerate(kind_rows(4)):
        step_case((3, 5, 7, 9), layout, dtype, grad_dtype, kinds, order, seed=seed)


# (shape, x offset, grad/x_nat offset, ELEMENT tensors' offset): offsets alike give an
# aligned head that the ELEMENT tensors must be shifted by too; offsets apart give none.
OFFSET_CASES = [
    ((1, 1, 1, 1), 0, 0, 0),
    ((1, 1, 1, 1), 1, 1, 1),
    ((2, 3), 3, 3, 3),
    ((2, 3), 1, 0, 2),
    ((7,), 2, 2, 2),
    ((3, 5, 7, 9), 3, 3, 3),
    ((3, 5, 7, 9), 0, 0, 1),
    ((2, 3, 17, 23), 5, 5, 5),  # two blocks of body
    ((2, 3, 17, 23), 1, 1, 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape,x_offset,other_offset,elem_offset", OFFSET_CASES, ids=str)
def test_linf_step_odd_shapes_and_offsets(shape, x_offset, other_offset, elem_offset, dtype):
    rows = [(ELEMENT,) * 4, (EXAMPLE_CHANNEL, EXAMPLE, CHANNEL, ELEMENT)]
    for order in ORDERS:
        for kinds in rows:
            step_case(shape, "contiguous", dtype, torch.float32, kinds, order,
                      x_offset=x_offset, other_offset=other_offset, elem_offset=elem_offset,
                      seed=order)


@pytest.mark.parametrize("order", ORDERS)
def test_linf_step_nan_inf_and_zero_parameters(order):
    """NaN in x, x_nat and every kind of parameter tensor propagate; infinities and signed
    zeros in them (alpha = inf with a 0 sign gives NaN, as alpha * 0 does in the formula)."""
    for seed, kinds in enumerate(kind_rows(4)):
        step_case((3, 5, 7, 9), "channels_last", torch.float32, torch.float32, kinds, order,
                  x_offset=3, other_offset=3, seed=seed, nan_params=True)


def test_linf_step_without_kinds_keeps_the_old_rule():
    """kinds=[] (old calls): eps/alpha per example where a tensor is given, lower/upper per
    channel, floats elsewhere; order 0."""
    for seed, tensors in enumerate([(0, 0, 0, 0), (1, 1, 1, 1), (1, 0, 0, 1), (0, 1, 1, 0)]):
        kinds = tuple(k if t else SCALAR for t, k in zip(tensors, (1, 1, 2, 2)))
        step_case((3, 5, 7, 9), "contiguous", torch.float32, torch.float32, kinds, 0,
                  seed=seed, legacy=True)


# --------------------------------------------------------------------------- random start


RANDOM_DRAWS = {k: STEP_DRAWS[k] for k in ("eps", "lower", "upper")}


def random_case(shape, layout, dtype, kinds, order, *, x_offset=0, other_offset=0,
                elem_offset=None, seed=0, nan_params=False, legacy=False):
    """Runs random_init once and compares it with spec_random on fastadv.reference's Philox
    uniforms at each element's walk position."""
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    if nan_params:
        x_nat.view(-1)[3::29] = NAN
    x = placed(torch.full(shape, 7.0), layout, x_offset, dtype)  # every element overwritten
    n = placed(x_nat, layout, other_offset, dtype)
    geo = Geometry(x, shape[1] if len(shape) > 1 else 1)
    elem_offset = other_offset if elem_offset is None else elem_offset
    params = []
    for name, kind in zip(RANDOM_DRAWS, kinds):
        value, (lo, hi) = RANDOM_DRAWS[name]
        specials = (NAN, 0.0, INF, -INF) if nan_params else ()
        params.append(Param(kind, value, uniform(lo, hi, gen, specials), geo, x, elem_offset))

    seed_t = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=gen)
    u = uniform_minus_one_one(philox_first_word(seed_t.view(()), geo.walk.cpu())).to(DEVICE)
    e, lo, hi = (p.at for p in params)
    want = spec_random(order, n.float(), e, u, lo, hi)
    args = [a for p in params for a in p.args()]
    extra = () if legacy else (list(kinds), order)
    kernels.random_init(x, n, seed_t.to(DEVICE), *args, geo.example_size, geo.channel_div,
                        *extra)
    assert_bits(x, want, f"random_init {shape} {layout} {dtype} kinds={kinds} order={order} "
                         f"offsets={x_offset}/{other_offset}/{elem_offset}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layout", list(DIM_ORDERS))
@pytest.mark.parametrize("order", ORDERS)
def test_random_init_every_order_and_kind(order, layout, dtype):
    for seed, kinds in enumerate(kind_rows(3)):
        random_case((3, 5, 7, 9), layout, dtype, kinds, order, seed=seed)


@pytest.mark.parametrize("shape,x_offset,other_offset,elem_offset", OFFSET_CASES, ids=str)
def test_random_init_odd_shapes_and_offsets(shape, x_offset, other_offset, elem_offset):
    for order in ORDERS:
        dtype = (torch.float32, torch.bfloat16, torch.float16)[order % 3]
        for kinds in [(ELEMENT,) * 3, (EXAMPLE_CHANNEL, ELEMENT, CHANNEL)]:
            random_case(shape, "contiguous", dtype, kinds, order, x_offset=x_offset,
                        other_offset=other_offset, elem_offset=elem_offset, seed=order)


@pytest.mark.parametrize("order", ORDERS)
def test_random_init_nan_and_inf_parameters(order):
    for seed, kinds in enumerate(kind_rows(3)):
        random_case((3, 5, 7, 9), "permuted", torch.float32, kinds, order, x_offset=1,
                    other_offset=1, seed=seed, nan_params=True)


def test_random_init_without_kinds_keeps_the_old_rule():
    for seed, tensors in enumerate([(0, 0, 0), (1, 1, 1), (1, 0, 1)]):
        kinds = tuple(k if t else SCALAR for t, k in zip(tensors, (1, 2, 2)))
        random_case((3, 5, 7, 9), "contiguous", torch.float32, kinds, 0, seed=seed,
                    legacy=True)
