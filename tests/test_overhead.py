"""The per-call path of fastadv.pgd_ (issue 16): cheap, but as strict as the full checks.
Timing itself is reported by the op benchmark (benchmarks/op.py), not asserted here."""

import pytest
import torch

import fastadv
from fastadv import _checks, ops, reference
from helpers import OpsSeen


def _state(batch=2):
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(batch, 3, 4, 4, generator=gen)
    return x_nat, x_nat.clone(), torch.randn(batch, 3, 4, 4, generator=gen)


def test_tensor_eps_values_are_read_once_per_version(monkeypatch):
    """A loop passing the same eps tensor every step reads its values (a host sync on CUDA)
    once; an in-place write to it makes the next call check again."""
    x_nat, x_adv, grad = _state()
    eps = torch.tensor([0.03, 0.05])
    reads = []
    check_values = _checks._check_values
    monkeypatch.setattr(_checks, "_check_values", lambda name, *a, **k: (
        reads.append(name), check_values(name, *a, **k)))
    for _ in range(3):
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.01)
    assert reads.count("eps") == 1
    eps[1] = -0.5  # in place: the version counter moves
    before = x_adv.clone()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.01)
    assert torch.equal(x_adv, before)


def test_a_new_tensor_with_the_same_id_is_checked():
    x_nat, x_adv, grad = _state()
    fastadv.pgd_(x_adv, grad, x_nat, eps=torch.tensor([0.03, 0.05]), alpha=0.01)
    for _ in range(3):  # ids of freed tensors are reused: the weak reference tells them apart
        with pytest.raises(ValueError, match="eps must be >= 0"):
            fastadv.pgd_(x_adv, grad, x_nat, eps=torch.tensor([0.03, -0.05]), alpha=0.01)


def test_cached_tensor_bounds_follow_the_batch_and_device():
    x_nat, x_adv, grad = _state()
    lower = torch.tensor([0.0, 0.1, 0.2]).view(3, 1, 1)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05, lower=lower)
    expected = reference.linf_step(x_adv, grad, x_nat, 0.1, 0.05, lower, 1.0)
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05, lower=lower)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=0)
    alpha = torch.tensor([0.01, 0.02])
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=alpha)
    x3, g3, n3 = x_adv[:1], grad[:1], x_nat[:1]
    with pytest.raises(ValueError, match=r"alpha must be a float or a tensor of shape \[B\]"):
        fastadv.pgd_(x3, g3, n3, eps=0.1, alpha=alpha)


@pytest.mark.parametrize("eps, alpha, lower, upper, match", [
    (float("nan"), 0.1, 0.0, 1.0, "eps must not be NaN"),
    (-0.1, 0.1, 0.0, 1.0, "eps must be >= 0"),
    (0.1, float("inf"), 0.0, 1.0, "alpha must be finite"),
    (0.1, float("nan"), 0.0, 1.0, "alpha must not be NaN"),
    (0.1, 0.1, 1.0, 0.0, "lower must be <= upper"),
    (0.1, 0.1, float("nan"), 1.0, "lower must not be NaN"),
])
def test_float_fast_path_keeps_every_check(eps, alpha, lower, upper, match):
    x_nat, x_adv, grad = _state()
    before = x_adv.clone()
    with pytest.raises(ValueError, match=match):
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=alpha, lower=lower, upper=upper)
    assert torch.equal(x_adv, before)


def test_fast_tensor_check_keeps_every_check():
    x_nat, x_adv, grad = _state()
    with pytest.raises(ValueError, match="grad must have the shape of x_adv"):
        fastadv.pgd_(x_adv, grad[:1], x_nat, eps=0.1, alpha=0.1)
    with pytest.raises(TypeError, match="x_nat must have the dtype of x_adv"):
        fastadv.pgd_(x_adv, grad, x_nat.double(), eps=0.1, alpha=0.1)
    with pytest.raises(TypeError, match="x_adv must be a floating-point tensor"):
        fastadv.pgd_(x_adv.int(), grad, x_nat, eps=0.1, alpha=0.1)
    with pytest.raises(ValueError, match="x_adv must have a batch dimension"):
        fastadv.pgd_(x_adv[0, 0, 0, 0], grad[0, 0, 0, 0], x_nat[0, 0, 0, 0], eps=0.1, alpha=0.1)


def test_modes_still_see_the_registered_op():
    """The eager path skips the dispatcher round trip only where nothing could observe it."""
    x_nat, x_adv, grad = _state()
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05)
    assert "fastadv.pgd_.default" in seen.ops


def test_eager_path_with_requires_grad_records_nothing():
    x_nat, x_adv, grad = _state()
    x_adv.requires_grad_(True)
    expected = reference.linf_step(x_adv.detach(), grad, x_nat, 0.1, 0.05, 0.0, 1.0)
    out = fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05)
    assert out is x_adv and out.grad_fn is None
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    assert ops._plain_eager(x_adv, grad, x_nat)
