"""The ops as torch.library citizens: opcheck, torch.compile(fullgraph=True), autograd."""

import math

import pytest
import torch

import fastadv
from fastadv import reference
from helpers import attack_state, to_layout


def _pgd_args(device, norm="linf", per_example=False, per_channel=False):
    x_nat, x_adv, grad = attack_state((2, 3, 5, 4), torch.float32, device)
    eps = torch.tensor([0.03, 0.1], device=device) if per_example else None
    lower = torch.tensor([0.0, 0.1, 0.2], device=device) if per_channel else None
    return (x_adv, grad, x_nat, eps, 0.03, None, 0.01, lower, 0.0, None, 1.0, norm)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per", [False, True], ids=["scalars", "tensors"])
def test_opcheck_pgd(device_backend, norm, per):
    device, _ = device_backend
    args = _pgd_args(device, norm, per_example=per, per_channel=per)
    torch.library.opcheck(torch.ops.fastadv.pgd_.default, args)
    torch.library.opcheck(torch.ops.fastadv.pgd_step.default, args)


def test_opcheck_random_init_and_keep_best(device_backend):
    device, _ = device_backend
    x_nat, x_adv, _ = attack_state((2, 3, 5, 4), torch.float32, device)
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.fastadv.random_init_.default,
                          (x_adv, x_nat, seed, None, 0.1, None, 0.0, None, 1.0))
    loss = torch.tensor([1.0, -1.0], device=device)
    torch.library.opcheck(torch.ops.fastadv.keep_best_.default,
                          (x_adv, torch.zeros(2, device=device), x_nat, loss))


def _toy_attack(model_w, x_nat, x_adv, steps, alpha):
    for _ in range(steps):
        grad = torch.cos(x_adv * model_w) * model_w  # gradient of sin(w*x), as a stand-in
        fastadv.pgd_(x_adv, grad, x_nat, eps=8 / 255, alpha=alpha)
    return x_adv


def test_compile_fullgraph_step_loop(device_backend):
    device, _ = device_backend
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(4, 3, 8, 8, generator=gen).to(device)
    w = torch.randn(3, 8, 8, generator=gen).to(device)
    eager = _toy_attack(w, x_nat, x_nat.clone(), 4, 2 / 255)
    compiled = torch.compile(_toy_attack, fullgraph=True, dynamic=False)
    out = compiled(w, x_nat, x_nat.clone(), 4, 2 / 255)
    assert torch.equal(out, eager)


def test_compile_pgd_step_and_random_init(device_backend):
    device, _ = device_backend
    torch._dynamo.reset()
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4), torch.float32, device)

    def fn(x_adv, grad, x_nat):
        start = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1)
        return fastadv.pgd_step(start, grad, x_nat, eps=0.1, alpha=0.05, norm="l2"), start

    out, start = torch.compile(fn, fullgraph=True)(x_adv, grad, x_nat)
    expected = reference.l2_step(start, grad, x_nat, 0.1, 0.05, 0.0, 1.0)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_gradcheck(norm):
    """fp64 (reference path): analytic vs numerical gradients w.r.t. x_adv, grad and x_nat."""
    gen = torch.Generator().manual_seed(0)
    x_nat = (0.2 + 0.6 * torch.rand(2, 3, 3, generator=gen)).double().requires_grad_()
    x_adv = (x_nat.detach() + 0.1 * torch.randn(2, 3, 3, generator=gen).double()).requires_grad_()
    grad = torch.randn(2, 3, 3, generator=gen).double().requires_grad_()

    def fn(x_adv, grad, x_nat):
        return fastadv.pgd_step(x_adv, grad, x_nat, eps=torch.tensor([0.05, 0.2]).double(),
                                alpha=0.02, lower=0.25, upper=0.75, norm=norm)

    assert torch.autograd.gradcheck(fn, (x_adv, grad, x_nat))


def test_pgd_step_backward_on_kernels(device_backend):
    """Gradients of the kernel path agree with autograd through the reference formula."""
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((3, 3, 4, 4), torch.float32, device, eps=0.05)
    x_adv.requires_grad_()
    x_nat.requires_grad_()
    out = fastadv.pgd_step(x_adv, grad, x_nat, eps=0.05, alpha=0.02)
    weights = torch.randn_like(out)
    d_x, d_nat = torch.autograd.grad((out * weights).sum(), (x_adv, x_nat))
    ref = reference.linf_step(x_adv, grad, x_nat, 0.05, 0.02, 0.0, 1.0)
    r_x, r_nat = torch.autograd.grad((ref * weights).sum(), (x_adv, x_nat))
    assert torch.equal(out.detach(), ref.detach())
    assert torch.equal(d_x, r_x) and torch.equal(d_nat, r_nat)


def test_pgd_in_place_in_a_grad_loop(device_backend):
    """The usual user loop: x_adv requires grad, pgd_ runs without a no_grad block."""
    device, _ = device_backend
    x_nat = torch.rand(2, 5, device=device)
    x_adv = x_nat.clone().requires_grad_()
    w = torch.randn(5, device=device)
    for _ in range(3):
        loss = (x_adv * w).sum()
        (g,) = torch.autograd.grad(loss, x_adv)
        fastadv.pgd_(x_adv, g, x_nat, eps=0.1, alpha=0.04)
    expected = (x_nat + torch.sign(w) * 0.1).clamp(0, 1)
    torch.testing.assert_close(x_adv.detach(), expected)


OTHER_OPS = {
    "pgd_ (float eps)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=0.03, alpha=0.01),
    "pgd_ (tensor eps)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=torch.full((2,), 0.03,
                                                                             device=x.device),
                                                      alpha=0.01),
    "pgd_ (l2)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=0.5, alpha=0.1, norm="l2"),
    "pgd_ (strided)": lambda x, g, n: fastadv.pgd_(x, to_layout(g, "strided"), n, eps=0.03,
                                                   alpha=0.01),
    "random_init_": lambda x, g, n: fastadv.random_init_(x, n, eps=0.03),
    "keep_best_": lambda x, g, n: fastadv.keep_best_(
        x, torch.full((2,), -math.inf, device=x.device), g, torch.zeros(2, device=x.device)),
}


@pytest.mark.parametrize("op", list(OTHER_OPS), ids=list(OTHER_OPS))
def test_every_backend_bumps_the_version(device_backend, op):
    """The kernels write through a pointer; the op still moves x_adv's version counter."""
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4), device=device)
    version = x_adv._version
    OTHER_OPS[op](x_adv, grad, x_nat)
    assert x_adv._version > version


def test_autograd_sees_the_write(device_backend):
    """A tensor saved for backward and then stepped in place is stale: backward says so
    instead of computing a wrong gradient."""
    device, _ = device_backend
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4), device=device)
    x_adv.requires_grad_()
    loss = (x_adv * x_adv).sum()  # saves x_adv
    with torch.no_grad():
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def _kinded_args(device, order, eps_shape, bound):
    """The registered op's arguments with eps of `eps_shape` (the op layer's normalised
    forms), a bound of kind `bound`, in rounding order `order`."""
    x_nat, x_adv, grad = attack_state((2, 3, 5, 4), torch.float32, device)
    if order >= 2:
        x_adv = (x_adv - x_nat).clamp(-0.03, 0.03)  # a perturbation
    eps = torch.full(eps_shape, 0.03, device=device) if eps_shape else None
    lower = {"none": None, "channel": torch.tensor([0.0, 0.1, 0.2], device=device),
             "element": torch.full((2, 3, 5, 4), 0.05, device=device),
             "example": torch.tensor([0.0, 0.1], device=device).view(2, 1, 1, 1)}[bound]
    return (x_adv, grad, x_nat, eps, 0.03, None, 0.01, lower, 0.0, None, 1.0, "linf", order)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("eps_shape, bound", [((), "none"), ((1, 3, 1, 1), "channel"),
                                               ((2, 3, 1, 1), "element"), ((2,), "example")])
def test_opcheck_every_order_and_kind(device_backend, order, eps_shape, bound):
    device, _ = device_backend
    args = _kinded_args(device, order, eps_shape, bound)
    torch.library.opcheck(torch.ops.fastadv.pgd_.default, args)
    torch.library.opcheck(torch.ops.fastadv.pgd_step.default, args)
    x_adv, _, x_nat, eps, e, _, _, lower, lo, _, hi, _, _ = args
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.fastadv.random_init_.default,
                          (x_adv, x_nat, seed, eps, e, lower, lo, None, hi, order))


def _toy_delta_attack(model_w, x, delta, steps, eps, alpha):
    for _ in range(steps):
        grad = torch.cos((x + delta) * model_w) * model_w
        fastadv.pgd_delta_(delta, grad, x, eps=eps, alpha=alpha)
    return delta


def test_compile_fullgraph_delta_loop_with_per_channel_eps(device_backend):
    device, _ = device_backend
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=gen).to(device)
    w = torch.randn(3, 8, 8, generator=gen).to(device)
    eps = torch.tensor([0.02, 0.03, 0.04], device=device).view(3, 1, 1)
    eager = _toy_delta_attack(w, x, torch.zeros_like(x), 4, eps, eps / 4)
    compiled = torch.compile(_toy_delta_attack, fullgraph=True, dynamic=False)
    out = compiled(w, x, torch.zeros_like(x), 4, eps, eps / 4)
    assert torch.equal(out, eager)


@pytest.mark.parametrize("order", ["delta_box", "image_box"])
def test_pgd_delta_step_gradcheck(order):
    """fp64 (reference path): gradients to delta (where no clamp is active) and to x."""
    gen = torch.Generator().manual_seed(1)
    x = (0.2 + 0.6 * torch.rand(2, 3, 3, generator=gen)).double().requires_grad_()
    delta = (0.1 * torch.randn(2, 3, 3, generator=gen)).double().requires_grad_()
    grad = torch.randn(2, 3, 3, generator=gen).double()

    def fn(delta, x):
        return fastadv.pgd_delta_step(delta, grad, x, eps=torch.tensor([0.05, 0.2]).double(),
                                      alpha=0.02, lower=0.25, upper=0.75, order=order)

    with pytest.warns(fastadv.errors.FormWarning):  # some of delta starts outside its box
        fn(delta, x)
    assert torch.autograd.gradcheck(fn, (delta, x))
