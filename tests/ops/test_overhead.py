"""The per-call path of fastadv.pgd_: one path (the arguments checked once in Python, then the
registered op), cheap but as strict as the full checks, and the same in every context.
Timing itself is reported by the op benchmark (benchmarks/op.py), not asserted here."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fastadv
from fastadv import backends, reference
from helpers import OpsSeen, attack_state

EPS, ALPHA = 8 / 255, 2 / 255


def _state(batch=2):
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(batch, 3, 4, 4, generator=gen)
    return x_nat, x_nat.clone(), torch.randn(batch, 3, 4, 4, generator=gen)


def _host_reads(ops) -> int:
    """How many tensor values were read back to the host (a sync on CUDA) among `ops`."""
    return ops.count("aten._local_scalar_dense.default")


def test_tensor_eps_values_are_read_once_per_version():
    """A loop passing the same eps tensor every step reads its values (a host sync on CUDA)
    once; an in-place write to it makes the next call check again."""
    x_nat, x_adv, grad = _state()
    fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)  # x_adv is now the op's own output
    eps = torch.tensor([0.03, 0.05])
    with OpsSeen() as seen:
        for _ in range(3):
            fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.01)
    assert _host_reads(seen.ops) == 1
    eps[0] = 0.04  # in place: the version counter moves, and the values are read again
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.01)
    assert _host_reads(seen.ops) == 1
    eps[1] = -0.5
    before = x_adv.clone()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=0.01)
    assert torch.equal(x_adv, before)


def test_the_start_check_reads_a_state_once():
    """x_adv written by anything but the ops is checked against its box (one host read); the
    steps after it, on the ops' own output, are not (detach() keeps the storage and version,
    as in a loop that detaches x_adv after each backward)."""
    x_nat, x_adv, grad = _state()
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    assert _host_reads(seen.ops) == 1
    with OpsSeen() as seen:
        for _ in range(3):
            x_adv = x_adv.detach()
            fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    assert _host_reads(seen.ops) == 0
    x_adv.add_(0.0)  # written by someone else: checked again
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    assert _host_reads(seen.ops) == 1


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
    with pytest.raises(ValueError, match=r"alpha must be a float, a tensor \[B\] = \[1\]"):
        fastadv.pgd_(x3, g3, n3, eps=0.1, alpha=alpha)


@pytest.mark.parametrize("eps, alpha, lower, upper, match", [
    (float("nan"), 0.1, 0.0, 1.0, "eps must not be NaN"),
    (-0.1, 0.1, 0.0, 1.0, "eps must be >= 0"),
    (0.1, float("inf"), 0.0, 1.0, "alpha must be finite"),
    (0.1, float("nan"), 0.0, 1.0, "alpha must not be NaN"),
    (0.1, 0.1, 1.0, 0.0, "lower must be <= upper"),
    (0.1, 0.1, float("nan"), 1.0, "lower must not be NaN"),
])
def test_float_parameters_keep_every_check(eps, alpha, lower, upper, match):
    x_nat, x_adv, grad = _state()
    before = x_adv.clone()
    with pytest.raises(ValueError, match=match):
        fastadv.pgd_(x_adv, grad, x_nat, eps=eps, alpha=alpha, lower=lower, upper=upper)
    assert torch.equal(x_adv, before)


def test_combined_tensor_check_keeps_every_check():
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
    """Every call goes through the registered op, so a dispatch mode sees it."""
    x_nat, x_adv, grad = _state()
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05)
    assert "fastadv.pgd_.default" in seen.ops


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.enable_grad])
def test_requires_grad_is_stepped_as_under_no_grad(grad_mode):
    """As the README's loop runs it (x_adv.requires_grad_(), grad mode on): in place as under
    no_grad, nothing recorded, the write seen by autograd (the version counter moves)."""
    x_nat, x_adv, grad = _state()
    x_adv.requires_grad_(True)
    expected = reference.linf_step(x_adv.detach(), grad, x_nat, 0.1, 0.05, 0.0, 1.0)
    version = x_adv._version
    with grad_mode():
        out = fastadv.pgd_(x_adv, grad, x_nat, eps=0.1, alpha=0.05)
    assert out is x_adv and out.is_leaf and out.grad_fn is None
    assert x_adv._version > version
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- every context


class _Functions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _plain(x_adv, grad, x_nat):
    return x_adv, grad, x_nat


def _parameter(x_adv, grad, x_nat):
    return torch.nn.Parameter(x_adv, requires_grad=False), grad, x_nat


def _neg_view(x_adv, grad, x_nat):
    return x_adv, grad, torch._neg_view(-x_nat)


def _float64(x_adv, grad, x_nat):
    return x_adv.double(), grad.double(), x_nat.double()


def _inference_tensors(x_adv, grad, x_nat):
    with torch.inference_mode():
        return x_adv.clone(), grad.clone(), x_nat.clone()


CONTEXTS = {  # (tensors, context, what else differs from the common call)
    "a TorchDispatchMode": (_plain, OpsSeen, {}),
    "a TorchFunctionMode": (_plain, _Functions, {}),
    "inference mode": (_plain, torch.inference_mode, {}),
    "inference tensors": (_inference_tensors, torch.enable_grad, {}),
    "autocast": (_plain, lambda: torch.autocast("cpu"), {}),
    "a Parameter": (_parameter, torch.enable_grad, {}),
    "a negative view": (_neg_view, torch.enable_grad, {}),
    "float64": (_float64, torch.enable_grad, {}),
    "tensor eps": (_plain, torch.enable_grad, {"eps": torch.tensor([EPS, EPS])}),
    "l2": (_plain, torch.enable_grad, {"norm": "l2"}),
}


@pytest.mark.parametrize("case", list(CONTEXTS), ids=list(CONTEXTS))
def test_every_context_gives_the_reference_step(case):
    """Modes, inference mode and tensors, autocast, subclasses, views with lazy negation,
    float64, tensor parameters and l2 all take the one path, with the reference's result."""
    make, context, params = CONTEXTS[case]
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    call = {"eps": EPS, "alpha": ALPHA, **params}
    want = (reference.l2_step if call.get("norm") == "l2" else reference.linf_step)(
        x_adv, grad, x_nat, call["eps"], ALPHA, 0.0, 1.0)
    x_adv, grad, x_nat = make(x_adv, grad, x_nat)
    with context():
        assert fastadv.pgd_(x_adv, grad, x_nat, **call) is x_adv
    torch.testing.assert_close(x_adv.detach(), want.to(x_adv.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("env", ["torch", "cpp", " CPP ", "",
                                 *(["triton"] if "triton" in backends.available("cpu") else [])])
def test_fastadv_backend_is_read_at_every_call(monkeypatch, env):
    """A change of FASTADV_BACKEND between two calls takes effect at the next call (choices
    are remembered per value, " CPP " read as "cpp"), and the step is right on each backend."""
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    want = reference.linf_step(x_adv, grad, x_nat, EPS, ALPHA, 0.0, 1.0)
    fastadv.pgd_(x_adv.clone(), grad, x_nat, eps=EPS, alpha=ALPHA)  # a choice made, unset
    monkeypatch.setenv("FASTADV_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="FASTADV_BACKEND=cuda cannot run on cpu"):
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    monkeypatch.setenv("FASTADV_BACKEND", env)
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
