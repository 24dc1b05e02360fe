"""The NaN contract of the C++ backends (CPU; CUDA too where a GPU is present): a NaN in
x_nat, x_adv, a per-example eps/alpha or a per-channel bound propagates to the output exactly
where the reference's torch.maximum/minimum/clamp put one; a NaN gradient counts as sign 0;
a NaN loss never wins keep_best. The kernels must agree with fastadv/reference.py element
for element, NaN for NaN, in the vectorised body of each run as in its scalar tail.

The public ops refuse NaN eps/alpha/bounds, so those cases go through the registered op
(torch.ops.fastadv.pgd_ / random_init_), which takes the normalised arguments as they are."""

import pytest
import torch

from fastadv import reference
from conftest import BACKEND_CASES
from helpers import DTYPES, assert_ulp_close

NAN = float("nan")
CPP_CASES = [(d, b) for d, b in BACKEND_CASES if b in ("cpp", "cuda")]

pytestmark = pytest.mark.skipif(not CPP_CASES, reason="fastadv._C is not built")

# (batch, channels, height, width) with the channel period (channel_div * C) of each:
#   (3, 3, 7, 11): 231 elements an example, per-channel bounds from the repeated table;
#   (2, 3, 40, 110): channel_div 4400 > 4096, per-channel bounds as one run per channel.
# Runs of the first are one example: a vectorised body (8 or 16 lanes) and a scalar tail of 7.
SHAPES = [(3, 3, 7, 11), (2, 3, 40, 110)]


@pytest.fixture(params=CPP_CASES, ids=[f"{d}-{b}" for d, b in CPP_CASES])
def device(request, monkeypatch):
    device, backend = request.param
    monkeypatch.setenv("FASTADV_BACKEND", backend)
    return torch.device(device)


def nan_positions(numel: int, example_size: int) -> torch.Tensor:
    """Flat positions that hit every vector lane, the first and last elements of each
    example (run heads and scalar tails) and the very last element."""
    gen = torch.Generator().manual_seed(numel)
    picked = torch.randperm(numel, generator=gen)[: max(1, numel // 10)]
    starts = torch.arange(0, numel, example_size)
    edges = torch.cat([starts, starts + 1, starts + example_size - 1, starts + example_size - 3])
    lanes = torch.arange(0, min(numel, 64))
    return torch.unique(torch.cat([picked, edges, lanes[::5], torch.tensor([numel - 1])]))


def state(shape, dtype, device, layout="contiguous", nan_in=None):
    """(x_adv, grad, x_nat) with NaN at nan_positions in the tensor named by nan_in, in
    memory order (so vector lanes and tails of channels_last runs are hit as well)."""
    gen = torch.Generator().manual_seed(7)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::13] = NAN  # NaN gradients count as sign 0 throughout
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tensors = {n: t.to(device, dtype).contiguous(memory_format=fmt)
               for n, t in (("x_adv", x_adv), ("grad", grad), ("x_nat", x_nat))}
    if nan_in is not None:
        t = tensors[nan_in]
        in_memory_order = torch.as_strided(t, (t.numel(),), (1,))  # dense: a flat view
        in_memory_order[nan_positions(t.numel(), t[0].numel()).to(device)] = NAN
    return tensors["x_adv"], tensors["grad"], tensors["x_nat"]


def scalar_or(t, value):
    return t if t is not None else value


def run_step(norm, x_adv, grad, x_nat, eps, alpha, lower, upper):
    """The registered op and the reference on the same arguments; both in x_adv's dtype."""
    expected = reference.linf_step if norm == "linf" else reference.l2_step
    want = expected(x_adv, grad, x_nat, *(scalar_or(*p) for p in (eps, alpha, lower, upper)))
    out = x_adv.clone()
    torch.ops.fastadv.pgd_(out, grad, x_nat, *eps, *alpha, *lower, *upper, norm)
    return out, want.to(x_adv.dtype)


# l2 sums squares in another order than the reference (as in test_pgd_l2.py).
L2_TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
          torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}


def assert_same(out, want, msg="", norm="linf"):
    """NaN exactly where the reference has NaN; elsewhere equal (l-inf, random start) or
    within the l2 tolerance."""
    assert torch.equal(torch.isnan(out), torch.isnan(want)), f"{msg}: NaN elsewhere"
    if norm == "l2":
        torch.testing.assert_close(out, want, equal_nan=True, msg=msg, **L2_TOL[out.dtype])
    else:
        assert_ulp_close(out, want, ulps=0, msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nan_in", ["x_nat", "x_adv"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_nan_inputs_match_reference(device, norm, nan_in, shape, layout, dtype):
    x_adv, grad, x_nat = state(shape, dtype, device, layout, nan_in)
    lower = torch.tensor([0.0, 0.1, 0.2], device=device)
    for bounds in (((None, 0.0), (None, 1.0)), ((lower, 0.0), (None, 1.0))):
        out, want = run_step(norm, x_adv, grad, x_nat, (None, 8 / 255), (None, 2 / 255), *bounds)
        nan_input = torch.isnan(x_adv if nan_in == "x_adv" else x_nat)
        if norm == "linf":  # every NaN input element gives a NaN output element
            assert torch.equal(torch.isnan(out), nan_input)
        else:  # an example with a NaN input comes out all NaN (its distance is NaN)
            per_example = nan_input.flatten(1).any(1).view(-1, *[1] * (out.dim() - 1))
            assert torch.equal(torch.isnan(out), per_example.expand_as(out))
        assert_same(out, want, f"{norm} NaN in {nan_in}", norm)


def test_linf_nan_x_nat_is_nan_not_a_bound(device):
    """The finding: a NaN in x_nat came out as the bound (here 0.55), the reference gives NaN."""
    x_nat = torch.tensor([[NAN, 0.5, NAN, 0.5]], device=device)
    x_adv = torch.full((1, 4), 0.5, device=device)
    out, want = run_step("linf", x_adv, torch.ones_like(x_adv), x_nat, (None, 0.1), (None, 0.05),
                         (None, 0.0), (None, 0.55))
    assert torch.isnan(want[0, ::2]).all()
    assert_same(out, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("which", ["eps", "alpha", "lower", "upper"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_nan_parameters_match_reference(device, norm, which, shape, dtype):
    x_adv, grad, x_nat = state(shape, dtype, device)
    batch, channels = shape[0], shape[1]
    params = {
        "eps": (torch.full((batch,), 0.05, device=device), 0.0),
        "alpha": (torch.full((batch,), 0.02, device=device), 0.0),
        "lower": (torch.tensor([0.0, 0.1, 0.2], device=device), 0.0),
        "upper": (torch.tensor([1.0, 0.9, 0.8], device=device), 1.0),
    }
    index = 1 if which in ("eps", "alpha") else channels - 2
    params[which][0][index] = NAN
    out, want = run_step(norm, x_adv, grad, x_nat, *params.values())
    assert torch.isnan(want).any()
    assert_same(out, want, f"{norm} NaN {which}", norm)


@pytest.mark.parametrize("which", ["lower", "upper"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_nan_scalar_bound_matches_reference(device, norm, which):
    x_adv, grad, x_nat = state((2, 3, 5, 7), torch.float32, device)
    bounds = {"lower": (None, 0.0), "upper": (None, 1.0)}
    bounds[which] = (None, NAN)
    out, want = run_step(norm, x_adv, grad, x_nat, (None, 0.05), (None, 0.02),
                         bounds["lower"], bounds["upper"])
    assert torch.isnan(want).all()
    assert_same(out, want, norm=norm)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nan_in", ["x_nat", "eps", "lower", "upper"])
def test_random_init_nan_matches_reference(device, nan_in, shape, layout, dtype):
    _, _, x_nat = state(shape, dtype, device, layout, "x_nat" if nan_in == "x_nat" else None)
    batch, channels = shape[0], shape[1]
    eps = (torch.full((batch,), 0.05, device=device), 0.0)
    lower = (torch.tensor([0.0, 0.1, 0.2], device=device), 0.0)
    upper = (torch.tensor([1.0, 0.9, 0.8], device=device), 1.0)
    if nan_in != "x_nat":
        {"eps": eps, "lower": lower, "upper": upper}[nan_in][0][1] = NAN
    seed = torch.tensor([0x0123456789ABCDEF], dtype=torch.int64, device=device)
    out = torch.empty_like(x_nat)
    torch.ops.fastadv.random_init_(out, x_nat, seed, *eps, *lower, *upper)
    want = reference.random_init(out, x_nat, seed, eps[0], lower[0], upper[0]).to(dtype)
    assert torch.isnan(want).any()
    assert_same(out, want, f"random_init NaN in {nan_in}")


def test_keep_best_nan_loss_never_wins(device):
    """A NaN candidate loss never replaces the kept one, and a kept NaN is never replaced
    (loss > NaN is false): as the reference."""
    best_x = torch.zeros(4, 3, 5, device=device)
    x = torch.ones(4, 3, 5, device=device)
    best_loss = torch.tensor([1.0, NAN, -float("inf"), NAN], device=device)
    loss = torch.tensor([NAN, 2.0, NAN, NAN], device=device)
    want_x, want_loss = reference.keep_best(best_x, best_loss, x, loss)
    torch.ops.fastadv.keep_best_(best_x, best_loss, x, loss)
    assert torch.equal(best_x, want_x) and not best_x.any()
    assert_same(best_loss, want_loss)
