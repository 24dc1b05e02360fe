"""The C++ fast path of fastadv.pgd_ (issue 16): the common call (plain CPU tensors, number
eps/alpha/bounds, l-inf, the C++ backend chosen) checked and run in one C++ call. It must
give the Python path's results bit for bit, never raise or write on a call it does not take
(the Python path then raises its usual error), decline whatever must see the op, and bump
x_adv's version counter like every backend."""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fastadv
from fastadv import backends, ops, reference
from helpers import DTYPES, OpsSeen, attack_state, to_layout

pytestmark = pytest.mark.skipif(not backends.has_extension(), reason="needs fastadv._C")

EPS, ALPHA = 8 / 255, 2 / 255
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture
def fast(monkeypatch):
    """fastadv._C._linf_step_fast, found and with the C++ backend chosen (FASTADV_BACKEND
    unset), as after any first pgd_ call."""
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    backends.reset()  # no choice left by an earlier test (another FASTADV_BACKEND's included)
    x_nat, x_adv, grad = attack_state((2, 3))
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    assert ops._fast_step is not None
    return ops._fast_step


def takes(fast, x_adv, grad, x_nat, eps=EPS, alpha=ALPHA, lower=0.0, upper=1.0, norm="linf"):
    """Whether the fast path takes this call (it then runs it, in place)."""
    return fast(x_adv, grad, x_nat, eps, alpha, lower, upper, norm, backends._chosen)


def slow_pgd_(*args, **kwargs):
    """fastadv.pgd_ by its Python path."""
    saved = ops._fast_step
    ops._fast_step = None
    try:
        return fastadv.pgd_(*args, **kwargs)
    finally:
        ops._fast_step = saved


def expected(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA, lower=0.0, upper=1.0):
    return reference.linf_step(x_adv, grad, x_nat, eps, alpha, lower, upper).to(x_adv.dtype)


def assert_bits_equal(actual, wanted):
    assert actual.dtype == wanted.dtype and actual.shape == wanted.shape
    bits = _BITS[actual.dtype]
    same = actual.contiguous().view(bits) == wanted.contiguous().view(bits)
    if not same.all():
        i = (~same).nonzero()[0].tolist()
        raise AssertionError(f"{int((~same).sum())} elements differ; first at {i}: "
                             f"{actual[tuple(i)].item()!r} vs {wanted[tuple(i)].item()!r}")


# --------------------------------------------------------------------------- same results


def test_pgd_takes_the_fast_path(fast, monkeypatch):
    def no_python_checks(*args):
        raise AssertionError("the Python path ran")
    monkeypatch.setattr(ops, "_step_args", no_python_checks)
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    want = expected(x_adv, grad, x_nat)
    assert fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA) is x_adv
    assert_bits_equal(x_adv, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 4, 4), (5, 3, 13, 11), (1000003,)],
                         ids=str)
def test_matches_reference_and_python_path(fast, shape, dtype):
    """Bit for bit, with zero and NaN gradients (attack_state mixes them in); the largest
    shape runs threaded and without the GIL."""
    x_nat, x_adv, grad = attack_state(shape, dtype)
    python_path = x_adv.clone()
    want = expected(x_adv, grad, x_nat)
    assert takes(fast, x_adv, grad, x_nat)
    slow_pgd_(python_path, grad, x_nat, eps=EPS, alpha=ALPHA)
    assert_bits_equal(x_adv, want)
    assert_bits_equal(python_path, want)


@pytest.mark.parametrize("grad_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_in_another_dtype(fast, dtype, grad_dtype):
    x_nat, x_adv, grad = attack_state((3, 3, 5, 5), dtype)
    grad = grad.to(grad_dtype)
    want = expected(x_adv, grad, x_nat)
    assert takes(fast, x_adv, grad, x_nat)
    assert_bits_equal(x_adv, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps, alpha, lower, upper", [
    (0.0, 0.1, 0.0, 1.0),             # eps = 0: x_adv <- x_nat (clipped)
    (0.1, -0.05, 0.0, 1.0),           # negative alpha descends
    (math.inf, 0.5, 0.2, 0.7),        # no ball, only the valid range
    (0.3, 0.2, -math.inf, math.inf),  # no valid range, only the ball
    (0.5, 0.25, 0.4, 0.4),            # lower == upper
    (1, 0, 0, 1),                     # ints, as float(value)
])
def test_parameter_values(fast, dtype, eps, alpha, lower, upper):
    x_nat, x_adv, grad = attack_state((4, 3, 5, 5), dtype)
    python_path = x_adv.clone()
    want = expected(x_adv, grad, x_nat, float(eps), float(alpha), float(lower), float(upper))
    assert takes(fast, x_adv, grad, x_nat, eps, alpha, lower, upper)
    slow_pgd_(python_path, grad, x_nat, eps=eps, alpha=alpha, lower=lower, upper=upper)
    assert_bits_equal(x_adv, want)
    assert_bits_equal(python_path, want)


LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]


@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("other_layout", LAYOUTS)
def test_layouts(fast, x_layout, other_layout):
    """Taken where the three tensors share one dense layout (the step is elementwise with
    number parameters, so any memory order is one flat walk); the Python path copies the
    others. Right either way, and x_adv keeps its strides."""
    x_nat, x_adv, grad = attack_state((3, 4, 6, 5))
    want = expected(x_adv, grad, x_nat)
    x_adv = to_layout(x_adv, x_layout)
    grad, x_nat = to_layout(grad, other_layout), to_layout(x_nat, other_layout)
    strides = x_adv.stride()
    taken = takes(fast, x_adv, grad, x_nat)
    assert taken == (x_layout == other_layout and x_layout != "strided")
    if not taken:
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    assert x_adv.stride() == strides
    assert_bits_equal(x_adv, want)


def test_empty_and_aliased_tensors(fast):
    """An empty batch is a no-op; x_adv passed as x_nat too steps within eps of itself, as
    the Python path does."""
    empty = torch.empty(0, 3)
    assert takes(fast, empty, empty.clone(), empty.clone())
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    python_path = x_adv.clone()
    want = expected(x_adv, grad, x_adv)
    assert takes(fast, x_adv, grad, x_adv)
    slow_pgd_(python_path, grad, python_path, eps=EPS, alpha=ALPHA)
    assert_bits_equal(x_adv, want)
    assert_bits_equal(python_path, want)


def test_views_write_their_own_elements(fast):
    x_nat, x_adv, grad = attack_state((6, 3, 4, 4))
    want = x_adv.clone()
    want[2:4] = expected(x_adv[2:4], grad[2:4], x_nat[2:4])
    assert takes(fast, x_adv[2:4], grad[2:4], x_nat[2:4])
    assert_bits_equal(x_adv, want)


# --------------------------------------------------------------------------- same errors

T = attack_state((2, 3, 4, 4))  # x_nat, x_adv, grad, never written: the calls below fail
BAD_CALLS = {
    "eps nan": dict(eps=math.nan),
    "eps negative": dict(eps=-0.1),
    "alpha inf": dict(alpha=math.inf),
    "alpha nan": dict(alpha=math.nan),
    "lower > upper": dict(lower=0.6, upper=0.4),
    "lower nan": dict(lower=math.nan),
    "upper nan": dict(upper=math.nan),
    "eps bool": dict(eps=True),
    "eps str": dict(eps="0.1"),
    "alpha int too large": dict(alpha=10**400),
    "eps tensor negative": dict(eps=torch.tensor([0.1, -0.1])),
    "norm l3": dict(norm="l3"),
    "norm None": dict(norm=None),
    "grad shape": dict(grad=T[2][:1]),
    "grad int": dict(grad=T[2].int()),
    "x_nat dtype": dict(x_nat=T[0].double()),
    "x_nat device": dict(x_nat=T[0].to("meta")),
    "x_adv int": dict(x_adv=T[1].int()),
    "x_adv 0-dim": dict(x_adv=T[1][0, 0, 0, 0], grad=T[2][0, 0, 0, 0], x_nat=T[0][0, 0, 0, 0]),
    "x_adv list": dict(x_adv=[0.5]),
    "bad FASTADV_BACKEND": dict(env="fortran"),
    "FASTADV_BACKEND cuda on cpu": dict(env="cuda"),
}


def _call(case):
    """(x_adv, grad, x_nat, keyword arguments, FASTADV_BACKEND) of a BAD_CALLS case."""
    call = {"x_nat": T[0], "x_adv": T[1].clone(), "grad": T[2], "eps": EPS, "alpha": ALPHA,
            "lower": 0.0, "upper": 1.0, "norm": "linf", **case}
    env = call.pop("env", None)
    return call.pop("x_adv"), call.pop("grad"), call.pop("x_nat"), call, env


def _failure(pgd, monkeypatch, case):
    """(type, message) of the error pgd raises for the case; checks nothing was written."""
    x_adv, grad, x_nat, kwargs, env = _call(case)
    if env is not None:
        monkeypatch.setenv("FASTADV_BACKEND", env)
    before = x_adv.clone() if isinstance(x_adv, torch.Tensor) else None
    try:
        with pytest.raises(Exception) as info:
            pgd(x_adv, grad, x_nat, **kwargs)
    finally:
        monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    if before is not None:
        assert torch.equal(x_adv, before), "written before the error"
    return info.type, str(info.value)


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_calls_raise_as_before(fast, monkeypatch, case):
    """The fast path declines (neither raises nor writes) and pgd_ raises the Python path's
    error, before writing anything."""
    with_fast = _failure(fastadv.pgd_, monkeypatch, BAD_CALLS[case])
    assert with_fast == _failure(slow_pgd_, monkeypatch, BAD_CALLS[case])
    x_adv, grad, x_nat, kwargs, env = _call(BAD_CALLS[case])
    if env is None:  # with env set, the choice is not made: declined (test_follows_...)
        before = x_adv.clone() if isinstance(x_adv, torch.Tensor) else None
        assert not takes(fast, x_adv, grad, x_nat, **kwargs)
        if before is not None:
            assert torch.equal(x_adv, before)


def test_wrong_argument_count_is_a_type_error(fast):
    with pytest.raises(TypeError, match="takes 9 arguments, got 2"):
        fast(T[1], T[2])


# --------------------------------------------------------------------------- declines


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


DECLINED = {  # (tensors, context, what else differs from the common call)
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


@pytest.mark.parametrize("case", list(DECLINED), ids=list(DECLINED))
def test_declines_what_it_does_not_handle(fast, case):
    make, context, params = DECLINED[case]
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    call = {"eps": EPS, "alpha": ALPHA, **params}
    want = (reference.l2_step if call.get("norm") == "l2" else reference.linf_step)(
        x_adv, grad, x_nat, call["eps"], ALPHA, 0.0, 1.0)
    x_adv, grad, x_nat = make(x_adv, grad, x_nat)
    with context():
        before = x_adv.detach().clone()
        assert not takes(fast, x_adv, grad, x_nat, call["eps"], ALPHA,
                         norm=call.get("norm", "linf"))
        assert torch.equal(x_adv.detach(), before)
        fastadv.pgd_(x_adv, grad, x_nat, **call)
    torch.testing.assert_close(x_adv.detach(), want.to(x_adv.dtype), rtol=0, atol=1e-6)


def test_a_mode_still_sees_the_op(fast):
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    with OpsSeen() as seen:
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    assert "fastadv.pgd_.default" in seen.ops


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.enable_grad])
def test_requires_grad_is_taken_as_under_no_grad(fast, grad_mode):
    """As pgd_ runs it (the loop of the README, x_adv.requires_grad_() with grad mode on):
    in place as under no_grad, nothing recorded, the write seen by autograd."""
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    want = expected(x_adv, grad, x_nat)
    x_adv.requires_grad_()
    version = x_adv._version
    with grad_mode():
        assert takes(fast, x_adv, grad, x_nat)
    assert x_adv.is_leaf and x_adv.grad_fn is None and x_adv._version > version
    assert_bits_equal(x_adv.detach(), want)


@pytest.mark.parametrize("env", ["torch", "cpp", " CPP ", "triton", ""])
def test_follows_the_backend_choice(fast, monkeypatch, env):
    """Taken where backends.select(cpu, "linf_step") is "cpp", read at every call; a choice
    not made yet for this FASTADV_BACKEND is made (with its errors) by the Python path."""
    monkeypatch.setenv("FASTADV_BACKEND", env)
    x_nat, x_adv, grad = attack_state((2, 3, 4, 4))
    want = expected(x_adv, grad, x_nat)
    assert not takes(fast, x_adv, grad, x_nat), "not chosen yet"
    try:
        chosen = backends.select(torch.device("cpu"), "linf_step")
    except RuntimeError as exc:  # e.g. no Triton here: pgd_ raises it too
        with pytest.raises(RuntimeError, match="FASTADV_BACKEND"):
            fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
        assert "cannot run" in str(exc)
        return
    assert takes(fast, x_adv, grad, x_nat) == (chosen == "cpp")
    if chosen != "cpp":
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
    monkeypatch.delenv("FASTADV_BACKEND")
    assert takes(fast, x_adv.clone(), grad, x_nat), "unset again: the C++ backend"


def test_reset_choices_are_made_again(fast):
    x_nat, x_adv, grad = attack_state((2, 3))
    backends.reset()
    assert not takes(fast, x_adv, grad, x_nat)
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    assert takes(fast, x_adv, grad, x_nat)


# --------------------------------------------------------------------------- version counter


OTHER_OPS = {
    "pgd_ (tensor eps)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=torch.full((2,), EPS),
                                                      alpha=ALPHA),
    "pgd_ (l2)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=0.5, alpha=0.1, norm="l2"),
    "pgd_ (strided)": lambda x, g, n: fastadv.pgd_(x, to_layout(g, "strided"), n, eps=EPS,
                                                   alpha=ALPHA),
    "pgd_ (float eps)": lambda x, g, n: fastadv.pgd_(x, g, n, eps=EPS, alpha=ALPHA),
    "random_init_": lambda x, g, n: fastadv.random_init_(x, n, eps=EPS),
    "keep_best_": lambda x, g, n: fastadv.keep_best_(x, torch.full((2,), -math.inf), g,
                                                     torch.zeros(2)),
}


@pytest.mark.parametrize("op", list(OTHER_OPS), ids=list(OTHER_OPS))
def test_every_backend_bumps_the_version(device_backend, op):
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
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
