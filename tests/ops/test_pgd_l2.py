"""fastadv.pgd_ (norm="l2"): per-example normalised step, l2-ball projection, clip."""

import pytest
import torch

import fastadv
from fastadv import reference
from helpers import DTYPES, attack_state, to_layout

# Sums of squares are reduced in a different order on each backend.
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
       torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}


def expected_l2(x_adv, grad, x_nat, eps, alpha, lower=0.0, upper=1.0):
    return reference.l2_step(x_adv, grad, x_nat, eps, alpha, lower, upper).to(x_adv.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 3, 7, 5), (5, 3, 13, 11), (2, 3, 40, 40)],
                         ids=str)
def test_matches_reference(device_backend, shape, dtype):
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state(shape, dtype, device, eps=0.5)
    expected = expected_l2(x_adv, grad, x_nat, 0.5, 0.1)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.5, alpha=0.1, norm="l2")
    torch.testing.assert_close(x_adv, expected, **TOL[dtype])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_layouts_and_per_example_parameters(device_backend, layout):
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((4, 3, 6, 6), torch.float32, device, eps=0.5)
    eps = torch.tensor([0.0, 0.1, 0.5, 100.0], device=device)
    alpha = torch.tensor([0.2, 0.05, 0.5, 1.0], device=device)
    lower = torch.tensor([0.0, 0.1, 0.2], device=device).view(3, 1, 1)
    expected = expected_l2(x_adv, grad, x_nat, eps, alpha, lower.view(3), 1.0)
    x_adv = to_layout(x_adv, layout)
    fastadv.pgd_(x_adv, to_layout(grad, layout), x_nat, eps=eps, alpha=alpha, lower=lower,
                 norm="l2")
    torch.testing.assert_close(x_adv, expected, **TOL[torch.float32])


def test_invariants(device_backend):
    """Inside the l2 ball (to rounding) and exactly inside [lower, upper]; a zero gradient
    takes no step; a step from the centre moves exactly alpha along g/||g||."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(1)
    x_nat = torch.rand(5, 3, 8, 8, generator=gen).to(device)
    x_adv = x_nat.clone()
    grad = torch.randn(5, 3, 8, 8, generator=gen).to(device)
    grad[1] = 0.0
    inner = torch.full_like(x_nat, 0.25) + 0.5 * x_nat * 0  # x_nat far from the box edges
    x_adv, x_nat = inner.clone(), inner.clone()
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.5, alpha=0.1, norm="l2")
    moved = (x_adv - x_nat).flatten(1).norm(dim=1)
    torch.testing.assert_close(moved[[0, 2, 3, 4]], torch.full((4,), 0.1, device=device))
    assert torch.equal(x_adv[1], x_nat[1])
    for _ in range(5):
        g = torch.randn(x_adv.shape, generator=gen).to(device)
        fastadv.pgd_(x_adv, g, x_nat, eps=0.5, alpha=0.3, norm="l2")
        assert ((x_adv - x_nat).flatten(1).norm(dim=1) <= 0.5 * (1 + 1e-6)).all()
        assert ((x_adv >= 0) & (x_adv <= 1)).all()


def test_nan_gradient_entries_count_as_zero(device_backend):
    device, _ = device_backend
    x_nat = torch.full((1, 4), 0.5, device=device)
    x_adv = x_nat.clone()
    grad = torch.tensor([[3.0, float("nan"), 4.0, 0.0]], device=device)
    fastadv.pgd_(x_adv, grad, x_nat, eps=1.0, alpha=0.05, norm="l2")
    torch.testing.assert_close(x_adv, torch.tensor([[0.53, 0.5, 0.54, 0.5]], device=device))
