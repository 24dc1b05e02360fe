"""The Triton kernels' own machinery, in Triton's interpreter: the aligned head | body | tail
split of the elementwise kernels, their 32-bit block index math, and the NaN contract
(a NaN in x_nat, x_adv, a per-example eps/alpha or a per-channel bound gives NaN exactly where
the reference gives NaN; a NaN gradient counts as sign 0). Compiling them for real GPUs is
tests/ops/test_triton_aot.py."""

import numpy as np
import pytest
import torch

from conftest import BACKEND_CASES
from fastadv import reference
from helpers import DTYPES, assert_ulp_close, step_ulps

HAVE_TRITON = any(b == "triton" for _, b in BACKEND_CASES)
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="the Triton kernels cannot run here")
if HAVE_TRITON:
    import triton
    import triton.language as tl

    from fastadv.kernels._common import MAX_BLOCK, channel_index, example_index

NAN = float("nan")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("FASTADV_BACKEND", "triton")


def offset_view(t: torch.Tensor, offset: int) -> torch.Tensor:
    """The same values, starting `offset` elements into a fresh allocation (a contiguous
    view that is not 16-byte aligned unless offset * element_size is a multiple of 16)."""
    big = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = big[offset:].view(t.shape)
    view.copy_(t)
    return view


def state(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::13] = NAN  # NaN gradients count as sign 0 throughout
    return x_adv.to(dtype), grad, x_nat.to(dtype)


def scalar_or(t, value):
    return t if t is not None else value


def registered_step(norm, x_adv, grad, x_nat, eps, alpha, lower, upper):
    """The registered op (no value checks: NaN parameters reach the kernel) and the
    reference on the same arguments; each (tensor or None, float)."""
    ref = reference.linf_step if norm == "linf" else reference.l2_step
    want = ref(x_adv, grad, x_nat, *(scalar_or(*p) for p in (eps, alpha, lower, upper)))
    out = x_adv.clone()
    torch.ops.fastadv.pgd_(out, grad, x_nat, *eps, *alpha, *lower, *upper, norm)
    return out, want.to(x_adv.dtype)


L2_TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
          torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}


def assert_same(out, want, norm="linf", msg=""):
    """NaN exactly where the reference has NaN; elsewhere bit for bit (l-inf; bf16 stores in
    the interpreter to 1 ulp) or within the l2 tolerance (sums in another order)."""
    assert torch.equal(torch.isnan(out), torch.isnan(want)), f"{msg}: NaN positions differ"
    if norm == "l2":
        torch.testing.assert_close(out, want, equal_nan=True, msg=msg, **L2_TOL[out.dtype])
    else:
        assert_ulp_close(out, want, ulps=step_ulps(CPU, "triton", out.dtype), msg=msg)


# --------------------------------------------------------------------------- index math


def test_small_floor_div_is_exact_for_every_block_range():
    """_small_floor_div's fp32 quotient, emulated in numpy for every dividend < 2*MAX_BLOCK
    and divisor <= MAX_BLOCK, with the reciprocal off by up to 2 ulps either way (a GPU's
    approximate division) before the kernel rounds it up by 4 ulps."""
    n = np.arange(2 * MAX_BLOCK, dtype=np.int64)
    for d in range(1, MAX_BLOCK + 1):
        exact = n // d
        r0 = (np.float32(1.0) / np.float32(d)).view(np.int32)
        for error in range(-2, 3):
            r = np.int32(r0 + error + 4).view(np.float32)
            q = (n.astype(np.float32) * r).astype(np.int64)  # fp32 product, truncated
            assert np.array_equal(q, exact), (d, error, np.nonzero(q != exact)[0][:5])


if HAVE_TRITON:
    @triton.jit
    def _index_kernel(out_ptr, g0, example_size, channel_div, channels, LANES: tl.constexpr,
                      BLOCK: tl.constexpr):
        lanes = tl.arange(0, LANES)
        tl.store(out_ptr + lanes, example_index(g0, lanes, example_size, BLOCK))
        tl.store(out_ptr + LANES + lanes, channel_index(g0, lanes, channel_div, channels, BLOCK))


@pytest.mark.parametrize("lanes", [1024, 16])
def test_block_index_math_matches_integer_division(lanes):
    """example_index/channel_index (per-program division, per-element int32 fp-trick) equal
    (g0 + lane) // example_size and ((g0 + lane) // channel_div) % channels, for blocks
    inside one example, across example and channel boundaries, and beyond 2**31."""
    kernel = _index_kernel
    rng = np.random.default_rng(0)
    cases = [(0, 3072, 1024, 3), (1000, 3072, 1024, 3), (3000, 3072, 1, 3), (5, 1, 1, 1),
             (7, 3, 1, 3), (999, 429, 143, 3), (12345, 1031, 1031, 1), (2**31 - 7, 17, 5, 3),
             (2**33 + 3, 2**32 + 5, 2**31 + 1, 2), (2**33, 3 * 2**31, 2**31, 3),
             (77, 1024, 1024, 1), (1023, 1024, 512, 2), (4095, 2048, 2, 1024), (10, 2, 1, 2)]
    for _ in range(40):
        d = int(rng.integers(1, 3000))
        c = int(rng.integers(1, 2000))
        e = d * c * int(rng.integers(1, 4))
        cases.append((int(rng.integers(0, 10**7)), e, d, c))
    for g0, example_size, channel_div, channels in cases:
        out = torch.empty(2 * lanes, dtype=torch.int64)
        kernel[(1,)](out, g0, example_size, channel_div, channels, LANES=lanes, BLOCK=1024)
        g = g0 + np.arange(lanes, dtype=np.int64)
        case = (g0, example_size, channel_div, channels)
        assert np.array_equal(out[:lanes].numpy(), g // example_size), case
        assert np.array_equal(out[lanes:].numpy(), (g // channel_div) % channels), case


# --------------------------------------------------------------------------- head | body | tail


def test_aligned_split():
    from fastadv.kernels._split import Split, aligned_split

    def flat(n, dtype=torch.float32, offset=0):
        return torch.empty(n + offset, dtype=dtype)[offset:]

    assert aligned_split(4096, [flat(4096), flat(4096, torch.bfloat16)]) == Split(0, 4096, 0)
    assert aligned_split(105, [flat(105), flat(105)]) == Split(0, 96, 9)
    assert aligned_split(105, [flat(105, offset=3), flat(105, offset=3)]) == Split(1, 96, 8)
    # 6 bytes and 12 bytes in: aligned again after 5 elements for both (16 and 32 bytes).
    assert aligned_split(99, [flat(99, offset=3), flat(99, torch.bfloat16, 3)]) == Split(5, 80, 14)
    assert aligned_split(105, [flat(105, offset=1), flat(105)]) == Split(0, 96, 9)  # no common
    assert aligned_split(5, [flat(5, offset=3)]) == Split(1, 0, 4)
    assert aligned_split(3, [flat(3, torch.float16, offset=1)]) == Split(0, 0, 3)
    # Aligned after exactly numel elements: no head, or the shifted tensors would be empty
    # (a null data_ptr, below which the head block read and wrote: found by the raw-op fuzz).
    assert aligned_split(3, [flat(3, offset=1)]) == Split(0, 0, 3)


# (shape, offset of x_adv, offset of grad and x_nat): odd sizes (tails), common offsets
# (heads), offsets no head aligns, bodies of several blocks.
SPLIT_CASES = [((5, 3, 13, 11), 0, 0), ((5, 3, 13, 11), 3, 3), ((4, 3, 9, 9), 1, 0),
               ((3, 2, 30, 29), 5, 5), ((2, 7), 1, 1), ((1, 3), 3, 3), ((33,), 2, 2)]


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,x_offset,other_offset", SPLIT_CASES, ids=str)
def test_linf_head_body_tail_match_reference(shape, x_offset, other_offset, dtype, grad_dtype):
    x_adv, grad, x_nat = state(shape, dtype)
    batch = shape[0]
    channels = shape[1] if len(shape) > 2 else 1
    eps = (torch.linspace(0.01, 0.2, batch), 0.0)
    alpha = (torch.linspace(0.05, -0.02, batch), 0.0)
    lower = (torch.linspace(0.0, 0.3, channels), 0.0) if len(shape) > 2 else (None, 0.1)
    upper = (torch.linspace(1.0, 0.7, channels), 1.0) if len(shape) > 2 else (None, 0.9)
    for params in ((eps, alpha, lower, upper), ((None, 0.03), (None, 0.01), (None, 0.0),
                                                (None, 1.0))):
        x = offset_view(x_adv, x_offset)
        g = offset_view(grad.to(grad_dtype), other_offset)
        n = offset_view(x_nat, other_offset)
        out, want = registered_step("linf", x, g, n, *params)
        assert_same(out, want, msg=f"{shape} offsets {x_offset}/{other_offset}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,x_offset,other_offset", SPLIT_CASES, ids=str)
def test_random_init_head_body_tail_match_reference(shape, x_offset, other_offset, dtype):
    import fastadv

    _, _, x_nat = state(shape, dtype)
    channels = shape[1] if len(shape) > 2 else 1
    eps = torch.linspace(0.01, 0.2, shape[0])
    lower = torch.linspace(0.0, 0.3, channels).view(-1, *[1] * (len(shape) - 2))
    x = offset_view(torch.zeros_like(x_nat), x_offset)
    n = offset_view(x_nat, other_offset)
    fastadv.random_init_(x, n, eps=eps, lower=lower, generator=torch.Generator().manual_seed(3))
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64,
                         generator=torch.Generator().manual_seed(3))
    want = reference.random_init(x, n, seed, eps, lower.reshape(-1), 1.0).to(dtype)
    assert_ulp_close(x, want, ulps=step_ulps(CPU, "triton", dtype))


# --------------------------------------------------------------------------- NaN contract


def nan_state(shape, dtype, nan_in):
    x_adv, grad, x_nat = state(shape, dtype, seed=1)
    t = {"x_adv": x_adv, "x_nat": x_nat}[nan_in]
    flat = t.view(-1)
    flat[::7] = NAN
    flat[-1] = NAN  # in the tail
    return x_adv, grad, x_nat


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nan_in", ["x_nat", "x_adv"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_triton_nan_inputs_match_reference(norm, nan_in, dtype):
    x_adv, grad, x_nat = nan_state((3, 3, 7, 11), dtype, nan_in)
    lower = torch.tensor([0.0, 0.1, 0.2])
    for bounds in (((None, 0.0), (None, 1.0)), ((lower, 0.0), (None, 1.0))):
        out, want = registered_step(norm, offset_view(x_adv, 3), grad, offset_view(x_nat, 3),
                                    (None, 8 / 255), (None, 2 / 255), *bounds)
        if norm == "linf":  # every NaN input element gives a NaN output element
            nan_input = x_adv if nan_in == "x_adv" else x_nat
            assert torch.isnan(out).sum() == torch.isnan(nan_input).sum()
        assert_same(out, want, norm, f"{norm} NaN in {nan_in}")


def test_triton_linf_nan_x_nat_is_nan_not_a_bound():
    """The finding: a NaN in x_nat came out as the bound (here 0.55); the reference: NaN."""
    x_nat = torch.tensor([[NAN, 0.5, NAN, 0.5]])
    x_adv = torch.full((1, 4), 0.5)
    out, want = registered_step("linf", x_adv, torch.ones_like(x_adv), x_nat, (None, 0.1),
                                (None, 0.05), (None, 0.0), (None, 0.55))
    assert torch.isnan(want[0, ::2]).all()
    assert_same(out, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("which", ["eps", "alpha", "lower", "upper"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_triton_nan_parameters_match_reference(norm, which, dtype):
    shape = (4, 3, 5, 7)
    x_adv, grad, x_nat = state(shape, dtype, seed=2)
    params = {
        "eps": (torch.full((4,), 0.05), 0.0),
        "alpha": (torch.full((4,), 0.02), 0.0),
        "lower": (torch.tensor([0.0, 0.1, 0.2]), 0.0),
        "upper": (torch.tensor([1.0, 0.9, 0.8]), 1.0),
    }
    params[which][0][1] = NAN
    out, want = registered_step(norm, x_adv, grad, x_nat, *params.values())
    assert torch.isnan(want).any()
    assert_same(out, want, norm, f"{norm} NaN {which}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_random_init_nan_x_nat_gives_nan_start(dtype):
    _, _, x_nat = nan_state((3, 3, 7, 11), dtype, "x_nat")
    lower = torch.tensor([0.0, 0.1, 0.2])
    seed = torch.tensor([1234567], dtype=torch.int64)
    for lo in ((None, 0.0), (lower, 0.0)):
        x = torch.zeros_like(x_nat)
        torch.ops.fastadv.random_init_(x, x_nat, seed, None, 8 / 255, *lo, None, 1.0)
        want = reference.random_init(x, x_nat, seed, 8 / 255, scalar_or(*lo), 1.0).to(dtype)
        assert torch.equal(torch.isnan(x), torch.isnan(x_nat))
        assert_same(x, want)
