"""The step without a ball: ``eps=math.inf`` means no projection to the ε-ball, only the clip
to [lower, upper] (N-FGSM's step, de Jorge et al. 2022: a start x + U(-2ε, 2ε), one step of
size ε, never projected back); ``eps=k*eps`` projects to the k·ε ball. On every backend, for
every entry point (pgd_, pgd_step and its backward, pgd_delta_ in both orders,
pgd_delta_step, l2), with float, per-example, per-channel and per-example-and-channel ε
holding inf, fp32/bf16/fp16, odd shapes and layouts, zero and NaN gradients; and the start
check, which must neither warn for a start far from x_nat nor compute NaN from inf."""

import contextlib
import math
import re
import warnings

import pytest
import torch

import fastadv
from fastadv import reference
from fastadv.errors import FormWarning
from helpers import DTYPES, assert_ulp_close, step_ulps, to_layout

INF = math.inf
ALPHA = 0.25  # large enough that the clip to [lower, upper] is active at many elements

# (shape, layout): odd and tiny shapes, dense and not.
CASES = [((1,), "contiguous"), ((5,), "strided"), ((1, 1, 1, 1), "contiguous"),
         ((3, 5), "transposed"), ((2, 3, 7, 5), "channels_last"), ((3, 2, 1, 3), "strided")]


def sign(g):
    """sign(0) = sign(NaN) = 0, in fp32."""
    return (g > 0).float() - (g < 0).float()


def state(shape, dtype, seed=0):
    """x in [0, 1]; x_adv in [0, 1] but far from x (up to 0.5 away: outside any small ball);
    a gradient with zeros, -0.0, NaN and ±inf mixed in."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + (torch.rand(shape, generator=gen) - 0.5)).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    flat = g.view(-1)
    flat[::7] = 0.0
    flat[1::9] = -0.0
    flat[3::11] = float("nan")
    flat[5::13] = float("inf")
    flat[6::13] = -float("inf")
    return x.to(dtype), x_adv.to(dtype), g


def bounds(kind, shape):
    """(lower, upper): floats, per channel, per element, or ±inf (no range at all)."""
    if kind == "floats":
        return 0.0, 1.0
    if kind == "infinite":
        return -INF, INF
    if kind == "per channel" and len(shape) > 1:
        c = shape[1]
        lower = torch.linspace(0.0, 0.2, c).view(c, *[1] * (len(shape) - 2))
        return lower, 1.0 - lower
    gen = torch.Generator().manual_seed(7)
    lower = torch.rand(shape, generator=gen) * 0.3
    return lower, lower + 0.5


def as_table(v):
    """A bound as a tensor that broadcasts against x, for torch.clamp."""
    return v if isinstance(v, torch.Tensor) else torch.tensor(v)


def interior_state(shape, seed):
    """x in [0.2, 0.8], x_adv within 0.15 of it: no element on a bound, so no tie splits a
    gradient; a step of ALPHA still leaves [0, 1] at some elements. Zero and NaN gradients."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(shape, generator=gen)
    x_adv = x + 0.3 * (torch.rand(shape, generator=gen) - 0.5)
    g = torch.randn(shape, generator=gen)
    g.view(-1)[::7] = 0.0
    g.view(-1)[3::11] = float("nan")
    return x, x_adv, g


@contextlib.contextmanager
def no_warning():
    """Any warning an error: a FormWarning, a RuntimeWarning (e.g. an invalid value cast)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- image form


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ["fused", "via_delta"])
@pytest.mark.parametrize("box", ["floats", "per channel", "per element", "infinite"])
def test_image_step_is_the_clip_only(device_backend, dtype, order, box):
    """pgd_(eps=inf): clamp(x_adv + α·sign(g), lower, upper), bit for bit in fp32 for
    "fused"; "via_delta" keeps its own rounding x_nat + (v - x_nat) (torchattacks' lines with
    an infinite ε). fp16/bf16: that fp32 value rounded once, as the reference gives it."""
    device, backend = device_backend
    for shape, layout in CASES:
        x, x_adv, g = state(shape, dtype)
        lower, upper = bounds(box, shape)
        x_adv = torch.clamp(x_adv.float(), as_table(lower), as_table(upper)).to(dtype)
        v = x_adv.float() + ALPHA * sign(g)
        if order == "via_delta":
            v = x.float() + (v - x.float())
        want = torch.clamp(v, as_table(lower), as_table(upper))
        if dtype == torch.float32 and order == "fused":
            assert torch.equal(want, torch.clamp(x_adv + ALPHA * sign(g), as_table(lower),
                                                 as_table(upper)))
        ref = reference.linf_step(x_adv, g, x, INF, ALPHA, lower, upper,
                                  fastadv.ops.IMAGE_ORDERS[order])
        assert torch.equal(ref, want), f"the reference's eps=inf, {shape}"
        if x.numel() > 4:  # the state is far from x: PGD's ε ball would change the result
            assert not torch.equal(reference.linf_step(x_adv, g, x, 8 / 255, ALPHA, lower,
                                                       upper), want)
        out = to_layout(x_adv, layout).to(device)
        strides = out.stride()
        lo = lower.to(device) if isinstance(lower, torch.Tensor) else lower
        hi = upper.to(device) if isinstance(upper, torch.Tensor) else upper
        with no_warning():
            result = fastadv.pgd_(out, to_layout(g, layout).to(device),
                                  to_layout(x, layout).to(device), eps=INF, alpha=ALPHA,
                                  lower=lo, upper=hi, order=order)
        assert result is out and out.stride() == strides
        assert_ulp_close(out.cpu(), want.to(dtype), ulps=step_ulps(device, backend, dtype),
                         msg=f"{order} {box} {layout} {list(shape)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ["delta_box", "image_box"])
def test_delta_step_is_the_clip_only(device_backend, dtype, order):
    """pgd_delta_(eps=inf): δ + α·sign(g) clipped so that x + δ lies in [lower, upper], in
    each order's rounding (robust_overfitting's / advertorch's lines without the ε clamp)."""
    device, backend = device_backend
    for box in ("floats", "per channel", "infinite"):
        for shape, layout in CASES:
            x, x_adv, g = state(shape, dtype, seed=1)
            lower, upper = bounds(box, shape)
            lo_t, hi_t = as_table(lower), as_table(upper)
            delta = (torch.clamp(x_adv.float(), lo_t, hi_t) - x.float()).to(dtype)
            xf = x.float()
            v = delta.float() + ALPHA * sign(g)
            if order == "delta_box":
                want = torch.clamp(v, lo_t - xf, hi_t - xf)
            else:
                want = torch.clamp(xf + v, lo_t, hi_t) - xf
            ref = reference.linf_step(delta, g, x, INF, ALPHA, lower, upper,
                                      fastadv.ops.DELTA_ORDERS[order])
            assert torch.equal(ref, want)
            out = to_layout(delta, layout).to(device)
            lo = lower.to(device) if isinstance(lower, torch.Tensor) else lower
            hi = upper.to(device) if isinstance(upper, torch.Tensor) else upper
            with no_warning():
                fastadv.pgd_delta_(out, to_layout(g, layout).to(device),
                                   to_layout(x, layout).to(device), eps=INF, alpha=ALPHA,
                                   lower=lo, upper=hi, order=order)
            assert_ulp_close(out.cpu(), want.to(dtype), ulps=step_ulps(device, backend, dtype),
                             msg=f"{order} {box} {layout} {list(shape)}")


# --------------------------------------------------------------------------- tensor eps


def expected_with_ball(x_adv, g, x, e, lower, upper):
    """The fused step with ε broadcast against x (inf where no ball), from the formula."""
    v = x_adv.float() + ALPHA * sign(g)
    xf = x.float()
    return torch.clamp(v, torch.maximum(xf - e, torch.as_tensor(lower)),
                       torch.minimum(xf + e, torch.as_tensor(upper)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_eps_with_inf_entries(device_backend, dtype):
    """Per example [B], per channel [C, 1, 1] and per example and channel [B, C, 1, 1]: where
    ε is inf, the clip only; elsewhere the ball; the same for the perturbation form."""
    device, backend = device_backend
    shape = (4, 3, 5, 3)
    x, x_adv, g = state(shape, dtype, seed=2)
    eps_forms = {
        "per example": (torch.tensor([INF, 0.05, INF, 0.0]), lambda e: e.view(4, 1, 1, 1)),
        "per channel": (torch.tensor([0.1, INF, INF]).view(3, 1, 1), lambda e: e),
        "per example and channel": (torch.tensor([[INF, 0.02, INF], [0.3, INF, 0.0],
                                                  [INF, INF, INF], [0.1, 0.1, INF]]
                                                 ).view(4, 3, 1, 1), lambda e: e),
    }
    for name, (eps, broadcast) in eps_forms.items():
        e = broadcast(eps)
        want = expected_with_ball(x_adv, g, x, e, 0.0, 1.0)
        clip_only = torch.clamp(x_adv.float() + ALPHA * sign(g), 0.0, 1.0)
        unbounded = torch.isinf(e).expand(shape)
        assert torch.equal(want[unbounded], clip_only[unbounded])
        assert not torch.equal(want[~unbounded], clip_only[~unbounded])  # the ball binds there
        for layout in ("contiguous", "channels_last", "strided"):
            out = to_layout(x_adv, layout).to(device)
            start = x.float() + torch.clamp(x_adv.float() - x.float(), -e, e)  # in its box
            out.copy_(start.to(dtype))
            want = expected_with_ball(out.cpu(), g, x, e, 0.0, 1.0)
            with no_warning():
                fastadv.pgd_(out, to_layout(g, layout).to(device),
                             to_layout(x, layout).to(device), eps=eps.to(device), alpha=ALPHA)
            assert_ulp_close(out.cpu(), want.to(dtype), ulps=step_ulps(device, backend, dtype),
                             msg=f"{name} {layout}")
        delta = torch.clamp(x_adv.float() - x.float(), -e, e).to(dtype).to(device)
        want = torch.clamp(torch.clamp(delta.cpu().float() + ALPHA * sign(g), -e, e),
                           -x.float(), 1 - x.float())
        with no_warning():
            fastadv.pgd_delta_(delta, g.to(device), x.to(device), eps=eps.to(device),
                               alpha=ALPHA)
        assert_ulp_close(delta.cpu(), want.to(dtype), ulps=step_ulps(device, backend, dtype),
                         msg=f"delta {name}")


@pytest.mark.parametrize("k", [1.0, 2.0, 3.5])
def test_a_k_eps_ball_is_eps_times_k(device_backend, k):
    """A k·ε ball is eps=k*eps: the fused formula with that radius, the result inside it."""
    device, _ = device_backend
    eps = 8 / 255
    x, _, g = state((3, 3, 6, 5), torch.float32, seed=3)
    gen = torch.Generator().manual_seed(4)
    start = (x + k * eps * (torch.rand(x.shape, generator=gen) * 2 - 1)).clamp(0, 1)
    out = start.clone().to(device)
    with no_warning():
        fastadv.pgd_(out, g.to(device), x.to(device), eps=k * eps, alpha=eps)
    v = start + eps * sign(g)
    want = torch.clamp(v, torch.clamp_min(x - k * eps, 0.0), torch.clamp_max(x + k * eps, 1.0))
    assert torch.equal(out.cpu(), want)
    assert ((out.cpu() - x).abs() <= k * eps * (1 + 1e-6)).all()
    assert not torch.equal(want, torch.clamp(v, 0.0, 1.0))  # the ball is active somewhere


# --------------------------------------------------------------------------- N-FGSM


def test_n_fgsm_step(device_backend):
    """de Jorge et al.'s step: x' = x + U(-2ε, 2ε) (clipped to [0, 1]), then one step of size
    ε without projection. eps=inf takes it; the ε ball would warn (x' lies outside it) and
    project; eps=2ε (k = 2) is the variant that clips to the noise's ball."""
    device, _ = device_backend
    eps = 8 / 255
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 7, 7, generator=gen)
    start = (x + 2 * eps * (torch.rand(x.shape, generator=gen) * 2 - 1)).clamp(0, 1)
    g = torch.randn(x.shape, generator=gen)
    want = torch.clamp(start + eps * sign(g), 0.0, 1.0)
    out = start.clone().to(device)
    with no_warning():
        fastadv.pgd_(out, g.to(device), x.to(device), eps=INF, alpha=eps)
    assert torch.equal(out.cpu(), want)
    assert (out.cpu() - x).abs().max() > 2 * eps  # no ball: up to 3ε from x
    delta = (start - x).to(device)
    with no_warning():
        fastadv.pgd_delta_(delta, g.to(device), x.to(device), eps=INF, alpha=eps)
    assert torch.equal(delta.cpu(), torch.clamp(start - x + eps * sign(g), -x, 1 - x))
    with pytest.warns(FormWarning, match="outside"):
        fastadv.pgd_(start.clone().to(device), g.to(device), x.to(device), eps=eps, alpha=eps)
    out = start.clone().to(device)
    with no_warning():
        fastadv.pgd_(out, g.to(device), x.to(device), eps=2 * eps, alpha=eps)
    assert ((out.cpu() - x).abs() <= 2 * eps * (1 + 1e-6)).all()


# --------------------------------------------------------------------------- functional + grad


@pytest.mark.parametrize("order", ["fused", "via_delta"])
def test_pgd_step_and_its_backward(device_backend, order):
    """pgd_step(eps=inf) gives pgd_'s values and leaves x_adv alone; its backward is finite:
    1 to x_adv where the clip is inactive, 0 elsewhere, and 0 to x_nat (no ball bound is
    ever active)."""
    device, _ = device_backend
    x, x_adv, g = interior_state((3, 2, 5, 4), seed=6)
    x, x_adv, g = x.to(device), x_adv.to(device), g.to(device)
    want = fastadv.pgd_(x_adv.clone(), g, x, eps=INF, alpha=ALPHA, order=order)
    leaf, centre = x_adv.clone().requires_grad_(), x.clone().requires_grad_()
    out = fastadv.pgd_step(leaf, g, centre, eps=INF, alpha=ALPHA, order=order)
    assert torch.equal(out.detach(), want) and torch.equal(leaf.detach(), x_adv)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(0)).to(device)
    (out * weights).sum().backward()
    v = x_adv + ALPHA * sign(g).to(device)
    free = ((v > 0) & (v < 1)).float()
    torch.testing.assert_close(leaf.grad, weights * free, rtol=0, atol=0)
    assert torch.equal(centre.grad, torch.zeros_like(x))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_backward_matches_a_ball_too_large_to_bind(device_backend, norm):
    """pgd_step's backward with eps=inf (float and per example) is finite and equals that of
    eps=1e6, a ball that never binds here (l2 used to give NaN: 0·inf in the unused
    projection branch)."""
    device, _ = device_backend
    x, x_adv, g = interior_state((3, 2, 4, 4), seed=8)
    x, x_adv, g = x.to(device), x_adv.to(device), g.to(device)
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)).to(device)

    def grads(eps):
        leaf, centre = x_adv.clone().requires_grad_(), x.clone().requires_grad_()
        gr = g.clone().requires_grad_(norm == "l2")
        out = fastadv.pgd_step(leaf, gr, centre, eps=eps, alpha=ALPHA, norm=norm)
        (out * weights).sum().backward()
        return out.detach(), leaf.grad, centre.grad, gr.grad

    for eps, finite in ((INF, 1e6), (torch.tensor([INF, INF, INF], device=device),
                                     torch.full((3,), 1e6, device=device))):
        got, want = grads(eps), grads(finite)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
                continue
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["delta_box", "image_box"])
def test_pgd_delta_step(device_backend, order):
    """pgd_delta_step(eps=inf): pgd_delta_'s values, delta untouched, a finite backward:
    1 to delta where the clip is inactive; to x, -1 where the clip is active (delta_box's
    bounds lower - x, upper - x) or, for image_box, -1 there too (clamp(x + v) - x)."""
    device, _ = device_backend
    x, x_adv, g = interior_state((2, 3, 4, 5), seed=9)
    delta = (x_adv - x).to(device)
    x, g = x.to(device), g.to(device)
    want = fastadv.pgd_delta_(delta.clone(), g, x, eps=INF, alpha=ALPHA, order=order)
    leaf, centre = delta.clone().requires_grad_(), x.clone().requires_grad_()
    out = fastadv.pgd_delta_step(leaf, g, centre, eps=INF, alpha=ALPHA, order=order)
    assert torch.equal(out.detach(), want) and torch.equal(leaf.detach(), delta)
    out.sum().backward()
    image = x + delta + ALPHA * sign(g).to(device)
    free = ((image > 0) & (image < 1)).float()
    assert torch.equal(leaf.grad, free)
    assert torch.equal(centre.grad, free - 1)


# --------------------------------------------------------------------------- l2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_without_a_ball(device_backend, dtype):
    """norm="l2", eps=inf (float, or per example beside finite radii): per example the
    normalised step clipped to [lower, upper] only; a zero gradient takes no step."""
    device, _ = device_backend
    tol = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
           torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}[dtype]
    for shape, layout in [((4, 3, 5, 5), "channels_last"), ((4, 7), "strided"),
                          ((4,), "contiguous")]:
        x, x_adv, g = state(shape, dtype, seed=10)
        g = g.nan_to_num(nan=float("nan"), posinf=2.0, neginf=-2.0)
        g[2] = 0.0
        gf = g.nan_to_num(nan=0.0)
        norm = gf.abs() if len(shape) == 1 else gf.flatten(1).norm(dim=1)
        norm = norm.view(-1, *[1] * (len(shape) - 1))
        step = torch.where(norm > 0, gf * (0.4 / torch.where(norm > 0, norm, 1.0)), 0.0)
        clip_only = torch.clamp(x_adv.float() + step, 0.0, 1.0)
        for eps in (INF, torch.tensor([INF, 0.05, INF, 0.3])):
            want = reference.l2_step(x_adv, g, x, eps, 0.4, 0.0, 1.0)
            unbounded = torch.isinf(torch.as_tensor(eps)).expand(4)
            torch.testing.assert_close(want[unbounded], clip_only[unbounded], atol=1e-6,
                                       rtol=1e-6)
            assert torch.equal(want[2], x_adv[2].float())  # no gradient, no step, no ball
            if isinstance(eps, torch.Tensor) and len(shape) > 1:
                moved = (want - x.float()).flatten(1).norm(dim=1)
                assert (moved[[1, 3]] <= eps[[1, 3]] * (1 + 1e-5)).all()
            out = to_layout(x_adv, layout).to(device)
            e = eps.to(device) if isinstance(eps, torch.Tensor) else eps
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FormWarning)  # a finite radius: x_adv is far
                warnings.simplefilter("error", RuntimeWarning)
                fastadv.pgd_(out, to_layout(g, layout).to(device), to_layout(x, layout).to(device),
                             eps=e, alpha=0.4, norm="l2")
            assert not torch.isnan(out).any()
            torch.testing.assert_close(out.cpu(), want.to(dtype), **tol)


# --------------------------------------------------------------------------- start check


@pytest.mark.parametrize("delta_form", [False, True])
def test_start_check_with_an_infinite_eps(device_backend, delta_form):
    """With eps=inf the start's box is [lower, upper]: a start far from x_nat but in range
    draws no warning (float eps, a tensor of infs, ±inf bounds too); one outside the range
    still warns, with a finite distance (no NaN from x - inf or inf - inf)."""
    device, _ = device_backend
    x, x_adv, g = state((3, 3, 4, 4), torch.float32, seed=11)
    x, x_adv, g = x.to(device), x_adv.to(device), g.to(device)
    op = fastadv.pgd_delta_ if delta_form else fastadv.pgd_
    start = (x_adv - x) if delta_form else x_adv
    for eps in (INF, torch.full((3,), INF, device=device),
                torch.full((3, 1, 1), INF, device=device)):
        for lower, upper in ((0.0, 1.0), (-INF, INF), (-INF, 1.0), (0.0, INF)):
            with no_warning():
                op(start.clone(), g, x, eps=eps, alpha=ALPHA, lower=lower, upper=upper)
    outside = start.clone()
    outside[0, 0, 0, 0] += 2.0  # above upper = 1 (image) / upper - x (perturbation)
    for lower in (0.0, -INF):
        with pytest.warns(FormWarning) as record:
            op(outside.clone(), g, x, eps=INF, alpha=ALPHA, lower=lower, upper=1.0)
        by = float(re.search(r"by up to ([^)]+)\)", str(record[0].message)).group(1))
        assert math.isfinite(by) and by > 0.5


def test_random_starts_refuse_an_infinite_eps():
    """The random starts draw eps·U(-1, 1): an infinite eps has no such draw (and inf·0 is
    NaN), so they refuse it, naming eps; nothing is written."""
    x = torch.rand(2, 3, 4, 4)
    for eps in (INF, torch.tensor([0.1, INF])):
        for op in (fastadv.random_init_, fastadv.random_delta_):
            out = torch.zeros_like(x)
            with pytest.raises(ValueError, match="eps must be finite"):
                op(out, x, eps=eps)
            assert torch.equal(out, torch.zeros_like(x))
