"""fastadv.pgd_ (norm="linf") on every backend against the reference formula."""

import pytest
import torch

import fastadv
from fastadv import reference
from helpers import DTYPES, assert_ulp_close, attack_state, interpreted, step_ulps, to_layout

SHAPES = [(1,), (1, 1, 1, 1), (3, 5), (2, 3, 7, 5), (5, 3, 13, 11), (4, 1, 9, 9), (6, 4, 3, 3, 3)]


def expected_linf(x_adv, grad, x_nat, eps, alpha, lower=0.0, upper=1.0):
    return reference.linf_step(x_adv, grad, x_nat, eps, alpha, lower, upper).to(x_adv.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_backend, shape, dtype):
    device, backend = device_backend
    x_nat, x_adv, grad = attack_state(shape, dtype, device)
    expected = expected_linf(x_adv, grad, x_nat, 8 / 255, 2 / 255)
    out = fastadv.pgd_(x_adv, grad, x_nat, eps=8 / 255, alpha=2 / 255)
    assert out is x_adv
    assert_ulp_close(x_adv, expected, ulps=step_ulps(device, backend, dtype))


@pytest.mark.parametrize("grad_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_in_another_dtype(device_backend, dtype, grad_dtype):
    device, backend = device_backend
    x_nat, x_adv, grad = attack_state((3, 3, 8, 8), dtype, device)
    grad = grad.to(grad_dtype)
    expected = expected_linf(x_adv, grad, x_nat, 0.03, 0.01)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    assert_ulp_close(x_adv, expected, ulps=step_ulps(device, backend, dtype))


LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]


@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("other_layout", ["contiguous", "channels_last", "strided"])
def test_layouts(device_backend, x_layout, other_layout):
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((3, 4, 6, 5), torch.float32, device)
    lower = torch.tensor([0.0, 0.1, 0.2, 0.05], device=device).view(4, 1, 1)
    upper = torch.tensor([1.0, 0.9, 0.8, 0.95], device=device).view(4, 1, 1)
    eps = torch.tensor([0.0, 0.03, 0.3], device=device)
    expected = expected_linf(x_adv, grad, x_nat, eps, 0.02, lower, upper)
    x_adv = to_layout(x_adv, x_layout)
    strides = x_adv.stride()
    fastadv.pgd_(x_adv, to_layout(grad, other_layout), to_layout(x_nat, other_layout),
                 eps=eps, alpha=0.02, lower=lower, upper=upper)
    assert x_adv.stride() == strides
    assert_ulp_close(x_adv, expected)


def test_per_example_and_per_channel_parameters(device_backend):
    device, backend = device_backend
    x_nat, x_adv, grad = attack_state((4, 3, 5, 5), torch.float32, device)
    eps = torch.tensor([0.0, 0.01, 0.1, float("inf")], device=device)
    alpha = torch.tensor([0.01, -0.02, 0.05, 0.5], device=device)
    lower = torch.tensor([-1.0, 0.2, 0.0], device=device).view(1, 3, 1, 1)
    upper = torch.tensor([0.5, 1.0, 2.0], device=device).view(3, 1, 1)
    expected = expected_linf(x_adv, grad, x_nat, eps, alpha, lower.view(3), upper.view(3))
    fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=alpha, lower=lower, upper=upper)
    assert_ulp_close(x_adv, expected)


def test_scalar_tensor_parameters(device_backend):
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4), torch.float32, device)
    expected = expected_linf(x_adv, grad, x_nat, 0.05, 0.01, 0.1, 0.9)
    fastadv.pgd_(x_adv, grad, x_nat, eps=torch.tensor(0.05), alpha=torch.tensor([0.01, 0.01]),
                 lower=torch.tensor([0.1]), upper=torch.tensor(0.9))
    assert_ulp_close(x_adv, expected)


@pytest.mark.parametrize("per_channel_side", ["lower", "upper"])
def test_one_bound_per_channel_the_other_a_one_element_tensor(device_backend,
                                                              per_channel_side):
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4), torch.float32, device)
    channels = torch.tensor([0.6, 0.0, 0.3], device=device).view(3, 1, 1)
    single = torch.tensor(0.9 if per_channel_side == "lower" else 0.1, device=device)
    lower, upper = (channels, single) if per_channel_side == "lower" else (single, channels + 0.5)
    expected = expected_linf(x_adv, grad, x_nat, 0.3, 0.05, lower, upper)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.3, alpha=0.05, lower=lower, upper=upper)
    assert_ulp_close(x_adv, expected)


def test_special_gradients(device_backend):
    """sign(0) = sign(NaN) = 0: those elements only get projected."""
    device, _ = device_backend
    x_nat = torch.full((2, 8), 0.5, device=device)
    x_adv = torch.tensor([[0.50, 0.52, 0.40, 0.60, 0.45, 0.5, 0.5, 0.5]] * 2, device=device)
    grad = torch.tensor([[0.0, float("nan"), 0.0, float("nan"), -0.0, 1e-30, -1e-30,
                          float("inf")]] * 2, device=device)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.05, alpha=0.01)
    expected = torch.tensor([0.50, 0.52, 0.45, 0.55, 0.45, 0.51, 0.49, 0.51], device=device)
    assert_ulp_close(x_adv[0], expected)


def test_large(device_backend):
    """>= 1M elements (smaller under the Triton interpreter, which is slow)."""
    device, backend = device_backend
    shape = (64, 3, 32, 32) if interpreted(device, backend) else (128, 3, 64, 64)
    x_nat, x_adv, grad = attack_state(shape, torch.float32, device)
    expected = expected_linf(x_adv, grad, x_nat, 8 / 255, 2 / 255)
    fastadv.pgd_(x_adv, grad, x_nat, eps=8 / 255, alpha=2 / 255)
    assert_ulp_close(x_adv, expected)


def test_exact_invariant_over_many_steps(device_backend):
    """max(lower, x-eps) <= x_adv <= min(upper, x+eps) exactly in fp32, step after step,
    starting outside the ball, with per-example eps and per-channel bounds."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(3)
    x_nat = (torch.rand(6, 3, 7, 7, generator=gen) * 1.2 - 0.1).to(device)
    x_adv = (torch.rand(6, 3, 7, 7, generator=gen) * 3 - 1).to(device)  # far outside
    eps = torch.tensor([1e-7, 1 / 255, 8 / 255, 0.1, 0.3, 0.0], device=device)
    lower = torch.tensor([0.0, 0.05, -0.1], device=device).view(3, 1, 1)
    upper = torch.tensor([1.0, 0.95, 1.1], device=device).view(3, 1, 1)
    e = eps.view(-1, 1, 1, 1)
    lo, hi = torch.maximum(lower, x_nat - e), torch.minimum(upper, x_nat + e)
    for step in range(6):
        grad = torch.randn(x_adv.shape, generator=gen).to(device)
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.37 / (step + 1), lower=lower, upper=upper)
        assert ((lo <= x_adv) | (lo > hi)).all() and (x_adv <= hi).all(), f"step {step}"


def test_zero_size_batch(device_backend):
    device, _ = device_backend
    x = torch.empty(0, 3, 4, 4, device=device)
    assert fastadv.pgd_(x, x.clone(), x.clone(), eps=0.1, alpha=0.1).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps, alpha, lower, upper", [
    (0.0, 0.1, 0.0, 1.0),                           # eps = 0: x_adv <- x_nat (clipped)
    (0.1, -0.05, 0.0, 1.0),                         # negative alpha descends
    (float("inf"), 0.5, 0.2, 0.7),                  # no ball, only the valid range
    (0.3, 0.2, -float("inf"), float("inf")),        # no valid range, only the ball
    (0.5, 0.25, 0.4, 0.4),                          # lower == upper
    (1, 0, 0, 1),                                   # ints, read as float(value)
])
def test_number_parameter_values(device_backend, dtype, eps, alpha, lower, upper):
    device, backend = device_backend
    x_nat, x_adv, grad = attack_state((4, 3, 5, 5), dtype, device)
    expected = expected_linf(x_adv, grad, x_nat, float(eps), float(alpha), float(lower),
                             float(upper))
    fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=alpha, lower=lower, upper=upper)
    assert_ulp_close(x_adv, expected, ulps=step_ulps(device, backend, dtype))


@pytest.mark.parametrize("centre", ["itself", "a view", "a detached alias"])
def test_x_nat_sharing_x_adv_memory_is_refused(device_backend, centre):
    """x_adv passed as x_nat too would move the ball with every step (no projection at all
    over an attack): refused, naming both, with x_adv unchanged."""
    device, _ = device_backend
    _, x_adv, grad = attack_state((2, 3, 4, 4), torch.float32, device)
    x_nat = {"itself": x_adv, "a view": x_adv.view(2, 3, 16).view(2, 3, 4, 4),
             "a detached alias": x_adv.detach()}[centre]
    before = x_adv.clone()
    with pytest.raises(ValueError, match="x_nat shares memory with x_adv"):
        fastadv.pgd_(x_adv, grad, x_nat, eps=8 / 255, alpha=2 / 255)
    with pytest.raises(ValueError, match="x shares memory with delta"):
        fastadv.pgd_delta_(x_adv, grad, x_nat, eps=8 / 255, alpha=2 / 255)
    with pytest.raises(ValueError, match="x_nat shares memory with x_adv"):
        fastadv.random_init_(x_adv, x_nat, eps=8 / 255)
    assert torch.equal(x_adv, before)


def test_a_view_writes_its_own_elements(device_backend):
    device, backend = device_backend
    x_nat, x_adv, grad = attack_state((6, 3, 4, 4), torch.float32, device)
    expected = x_adv.clone()
    expected[2:4] = expected_linf(x_adv[2:4], grad[2:4], x_nat[2:4], 8 / 255, 2 / 255)
    fastadv.pgd_(x_adv[2:4], grad[2:4], x_nat[2:4], eps=8 / 255, alpha=2 / 255)
    assert_ulp_close(x_adv, expected, ulps=step_ulps(device, backend, torch.float32))


def test_keeps_nan_inputs_visible(device_backend):
    """A NaN already in x_adv stays NaN (like torch.clamp) instead of being hidden."""
    device, _ = device_backend
    x_nat = torch.full((1, 4), 0.5, device=device)
    x_adv = torch.tensor([[float("nan"), 0.5, 0.5, 0.5]], device=device)
    fastadv.pgd_(x_adv, torch.ones_like(x_adv), x_nat, eps=0.1, alpha=0.01)
    assert torch.isnan(x_adv[0, 0]) and torch.all(x_adv[0, 1:] == torch.tensor(0.51))
