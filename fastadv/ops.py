"""fastadv's ops: the public functions (validate, then call the registered op) and their
``torch.library`` registrations (pick a backend, lay the tensors out for it, launch).

Each public function has one call path: it checks its arguments once (``_checks``), then
calls the registered op ``torch.ops.fastadv.<op>``, whose implementation picks a backend
(``backends``) and launches its kernel. The kernels in ``kernels/`` (Triton) and ``csrc/``
(C++/CUDA) and the reference in ``reference.py`` trust these checks for the values; the C++
entry points keep their own memory-safety checks (``csrc/checks.h``), and the Triton launchers
are called through the same rules in Python (``_kernel_checks``).
"""

import functools
from typing import Optional

import torch
from torch import Tensor

from . import _checks, _kernel_checks, backends, reference
from ._layout import flat_layout, same_strides

# --------------------------------------------------------------------------- dispatch


@functools.cache
def _kernel(backend: str, name: str):
    """The launcher for kernel `name` (linf_step, l2_step, random_init, keep_best)."""
    if backend == "triton":
        from . import kernels

        return _triton_launcher(name, getattr(kernels, name))
    overload = getattr(torch.ops.fastadv, f"_{name}_kernel_").default
    return getattr(overload, "_op", overload)  # the C++ callable, without a Python frame


class _TritonFailed(Exception):
    """A Triton kernel failed to compile or launch (recorded in backends): dispatch again."""


def _triton_launcher(name: str, launch):
    """Runs a Triton launcher on x's device (the current CUDA device and its stream are where
    Triton launches; the C++ kernels do the same with a CUDAGuard), after the checks the C++
    kernel op makes (``_kernel_checks``, csrc/checks.h's rules): a registered op called
    directly with bad arguments raises there instead of launching out of bounds. A kernel that
    fails to compile or launch, unforced, is recorded and raises _TritonFailed so that the op
    runs the next backend. Nothing has been written then: Triton compiles before it launches,
    and a launch that fails enqueues nothing."""
    @functools.wraps(launch)
    def run(x: Tensor, *args):
        _kernel_checks.launcher_args(name, x, args)  # outside the try: not a Triton failure
        try:
            if x.is_cuda and x.device.index != torch.cuda.current_device():
                with torch.cuda.device(x.device):
                    return launch(x, *args)
            return launch(x, *args)
        except Exception as exc:
            if backends.forced() == "triton":
                raise
            backends.triton_failed(x.device, name, exc)
            raise _TritonFailed(name) from exc
    return run


def _uses_reference(backend: str, *tensors: Tensor) -> bool:
    # The kernels cover fp32/fp16/bf16; fp64 (e.g. for gradcheck) runs the reference.
    if backend == "torch":
        return True
    for t in tensors:
        if t.dtype is torch.float64:
            return True
    return False


def _launch_flat(backend: str, name: str, x: Tensor, reads: list, params: tuple,
                 kinds: tuple = (), order: int = 0, lead: tuple = ()) -> None:
    """Run kernel `name` on x (written) and `reads`, all walked flat in x's memory order, with
    `params` the kernel's (table, value) pairs after the arguments `lead`, and `kinds` their
    kinds (() = the older form). Tensors without that one dense layout are copied into it
    (and x back afterwards)."""
    _launch_flat_with(_kernel(backend, name), x, reads, params, kinds, order, lead)


def _launch_flat_with(launch, x: Tensor, reads: list, params: tuple, kinds: tuple = (),
                      order: int = 0, lead: tuple = ()) -> None:
    extra = walked = ()
    if kinds or order:
        extra = (list(kinds), order)
        walked = [k for k, kind in enumerate(kinds) if kind == ELEMENT]  # laid out like x
    if (x.is_contiguous() and all(r.is_contiguous() for r in reads)
            and all(params[2 * k].is_contiguous() for k in walked)):  # the per-step case
        numel, batch = x.numel(), x.shape[0]
        example_size = max(numel // batch if batch else 1, 1)
        # As flat_layout: 1 where dim 1 holds at most one element (its stride is then any).
        channel_div = x.stride(1) if x.dim() > 1 and x.shape[1] > 1 and numel else 1
        launch(x, *reads, *lead, *params, example_size, channel_div, *extra)
        return
    layout = flat_layout(x)
    work = x if layout is not None else x.contiguous()
    if layout is None:
        layout = flat_layout(work)

    def like_work(t: Tensor) -> Tensor:
        return t if same_strides(t, work) else torch.empty_like(work, dtype=t.dtype).copy_(t)

    reads = [like_work(r) for r in reads]
    params = list(params)
    for k in walked:
        params[2 * k] = like_work(params[2 * k])
    launch(work, *reads, *lead, *params, *layout, *extra)
    if work is not x:
        x.copy_(work)


# How a parameter is indexed (csrc/params.h Kind); the 1-D tables of the older form are per
# example (eps, alpha) or per channel (lower, upper).
SCALAR, EXAMPLE, CHANNEL, EXAMPLE_CHANNEL, ELEMENT = range(5)


def _table_kind(op: str, name: str, t: Optional[Tensor], x: Tensor, flat_kind: int):
    """(table, kind) for a normalised parameter: None, a 1-D table (flat_kind), or a tensor
    with x's dims that broadcasts against it (its kind from the dims along which it varies)."""
    if t is None:
        return None, SCALAR
    if t.dim() == 1 and x.dim() > 1:
        return t, flat_kind
    if t.dim() != x.dim() or any(size not in (1, x.shape[d]) for d, size in enumerate(t.shape)):
        raise ValueError(f"fastadv::{op}: {name} must be a 1-D table or broadcast against x "
                         f"{list(x.shape)} with its {x.dim()} dims, got shape {list(t.shape)}")
    varies = 0
    for d, size in enumerate(t.shape):
        if size != 1:
            varies |= 1 << min(d, 2)
    if varies == 0:
        length = x.shape[0] if flat_kind == EXAMPLE else (x.shape[1] if x.dim() > 1 else 1)
        return t.reshape(1).expand(length).contiguous(), flat_kind
    if varies < 4:  # along dims 0 and 1 only: a table of B, C or B*C values
        return t.reshape(-1).contiguous(), (EXAMPLE, CHANNEL, EXAMPLE_CHANNEL)[varies - 1]
    return t.expand(x.shape), ELEMENT


def _kinds(op: str, x: Tensor, tables: tuple, flat_kinds: tuple):
    """The kernels' (table, value) pairs and kinds for normalised (table, value) pairs: kinds
    () when they are all of the older form (1-D tables per example / per channel)."""
    if all(t is None or (t.dim() == 1 and x.dim() > 1) for t in tables[::2]):
        return tables, ()
    pairs, kinds = [], []
    for k, flat_kind in enumerate(flat_kinds):
        table, kind = _table_kind(op, _PARAM_NAMES[len(flat_kinds)][k], tables[2 * k], x,
                                  flat_kind)
        pairs += [table, tables[2 * k + 1]]
        kinds.append(kind)
    if all(kind in (SCALAR, flat) for kind, flat in zip(kinds, flat_kinds)):
        return tuple(pairs), ()  # the older form after all (e.g. a 1-D x)
    return tuple(pairs), tuple(kinds)


_PARAM_NAMES = {4: ("eps", "alpha", "lower", "upper"), 3: ("eps", "lower", "upper")}
_STEP_FLAT_KINDS = (EXAMPLE, EXAMPLE, CHANNEL, CHANNEL)
_RANDOM_FLAT_KINDS = (EXAMPLE, CHANNEL, CHANNEL)


def _order(op: str, order) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= 3:
        raise ValueError(f"fastadv::{op}: order must be 0, 1, 2 or 3, got {order!r}")
    return order


def _check_devices(op: str, written: Tensor, **others: Optional[Tensor]) -> None:
    """Every tensor on the written tensor's device, checked before any backend runs (a kernel
    handed a CPU seed for a CUDA x would read host memory on the GPU)."""
    # Here only for the Triton kernels, launched from Python without csrc/checks.h.
    for name, t in others.items():
        if t is not None and t.device != written.device:
            raise ValueError(f"fastadv::{op}: {name} is on {t.device} but the tensor written is "
                             f"on {written.device}")


def _wrote(*tensors: Tensor) -> None:
    """Bumps the version counters of tensors a kernel wrote through a pointer: the dispatcher
    does not for these ops, and autograd must see the write (a tensor it saved for backward
    is now stale; inference tensors have no counter and are skipped)."""
    torch._C._increment_version(tensors)


def _scalar_or_tensor(per: Optional[Tensor], value: float):
    return per if per is not None else value


# --------------------------------------------------------------------------- registered ops
#
# Defined with torch.library.Library rather than @custom_op: the same registrations (schema,
# fake, autograd) with less Python work per dispatch, which a small step cannot hide.

_LIB = torch.library.Library("fastadv", "FRAGMENT")  # csrc/ owns the kernel ops' DEF block
# eps_t .. upper_t: the tensor form of a parameter (else its float is used): a 1-D table
# ([B] for eps/alpha, [C] for the bounds) or a tensor with x's dims broadcasting against it.
# order: the rounding order (reference.linf_step; 2 and 3 step a perturbation, l-inf only).
_STEP_ARGS = ("Tensor grad, Tensor x_nat, Tensor? eps_t, float eps, Tensor? alpha_t, "
              "float alpha, Tensor? lower_t, float lower, Tensor? upper_t, float upper, "
              "str norm, int order=0")
_LIB.define(f"pgd_(Tensor(a!) x_adv, {_STEP_ARGS}) -> ()")
_LIB.define(f"pgd_step(Tensor x_adv, {_STEP_ARGS}) -> Tensor")
_LIB.define("random_init_(Tensor(a!) x_adv, Tensor x_nat, Tensor seed, Tensor? eps_t, "
            "float eps, Tensor? lower_t, float lower, Tensor? upper_t, float upper, "
            "int order=0) -> ()")
_LIB.define("keep_best_(Tensor(a!) best_x, Tensor(b!) best_loss, Tensor x, Tensor loss) -> ()")


def _register(name: str):
    """Registers fn as the op's implementation on every device (it dispatches itself)."""
    def wrap(fn):
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return fn
    return wrap


_STEP_KERNELS = {"linf": "linf_step", "l2": "l2_step"}


@_register("pgd_")
def _pgd_op(
    x_adv: Tensor, grad: Tensor, x_nat: Tensor,
    eps_t: Optional[Tensor], eps: float,
    alpha_t: Optional[Tensor], alpha: float,
    lower_t: Optional[Tensor], lower: float,
    upper_t: Optional[Tensor], upper: float,
    norm: str, order: int = 0,
) -> None:
    device = x_adv.device
    params = (eps_t, eps, alpha_t, alpha, lower_t, lower, upper_t, upper)
    kinds = ()
    if (grad.device != device or x_nat.device != device or eps_t is not None
            or alpha_t is not None or lower_t is not None
            or upper_t is not None):  # the float-parameter case checks two devices
        _check_devices("pgd_", x_adv, grad=grad, x_nat=x_nat, eps_t=eps_t, alpha_t=alpha_t,
                       lower_t=lower_t, upper_t=upper_t)
        params, kinds = _kinds("pgd_", x_adv, params, _STEP_FLAT_KINDS)
    kernel = _STEP_KERNELS.get(norm)
    if kernel is None:  # the registered op called directly with another norm
        _checks.norm(norm)
    if order:
        _order("pgd_", order)
    if norm == "l2" and (kinds or order):
        raise ValueError("fastadv::pgd_: norm='l2' takes eps and alpha per example and the "
                         "bounds per channel (1-D tables), and order 0")
    backend = backends.select(device, kernel)
    if _uses_reference(backend, x_adv, grad):
        if norm == "linf":
            stepped = reference.linf_step(
                x_adv, grad, x_nat, _scalar_or_tensor(eps_t, eps),
                _scalar_or_tensor(alpha_t, alpha), _scalar_or_tensor(lower_t, lower),
                _scalar_or_tensor(upper_t, upper), order)
        else:
            stepped = reference.l2_step(
                x_adv, grad, x_nat, _scalar_or_tensor(eps_t, eps),
                _scalar_or_tensor(alpha_t, alpha), _scalar_or_tensor(lower_t, lower),
                _scalar_or_tensor(upper_t, upper))
        x_adv.copy_(stepped)
        return
    try:
        _launch_flat(backend, kernel, x_adv, [grad, x_nat], params, kinds, order)
    except _TritonFailed:  # x_adv untouched; the next backend takes this call and later ones
        _pgd_op(x_adv, grad, x_nat, eps_t, eps, alpha_t, alpha, lower_t, lower, upper_t, upper,
                norm, order)
        return
    _wrote(x_adv)


@torch.library.register_fake("fastadv::pgd_", lib=_LIB)
def _(x_adv, grad, x_nat, *args) -> None:
    return None


# ----------------------------------------------------------------- traceable Triton path
#
# fastadv::pgd_ is opaque to torch.compile: Inductor sees a call it cannot look into. Where
# the step runs on Triton (CUDA tensors, torch >= 2.6), AOT tracing instead decomposes it
# into fastadv::_pgd_triton_, a torch.library.triton_op whose body launches the same
# kernels through wrap_triton: the graph then holds the Triton kernel itself
# (triton_kernel_wrapper_functional), which Inductor compiles, schedules and captures in
# CUDA graphs with its own kernels. Everything else (the C++ kernels, the reference, older
# torch, torch.export) keeps the opaque op. In eager code nothing changes: the op runs its
# implementation above, with its fallback when a Triton kernel fails. Under torch.compile a
# Triton kernel that fails to compile fails the compile (FASTADV_BACKEND=cuda avoids it).

_TRACEABLE_TRITON = hasattr(torch.library, "triton_op") and hasattr(torch.library,
                                                                    "register_torch_dispatch")


def _pgd_triton(
    x_adv: Tensor, grad: Tensor, x_nat: Tensor,
    eps_t: Optional[Tensor], eps: float,
    alpha_t: Optional[Tensor], alpha: float,
    lower_t: Optional[Tensor], lower: float,
    upper_t: Optional[Tensor], upper: float,
    norm: str, order: int = 0,
) -> None:
    from . import kernels

    name = _STEP_KERNELS.get(norm) or _checks.norm(norm)  # which raises for another norm
    launch = getattr(kernels, name)

    def checked(x, *args):  # the checks of _triton_launcher, on the tracer's tensors too
        _kernel_checks.launcher_args(name, x, args)
        launch(x, *args)

    params, kinds = _kinds("pgd_", x_adv, (eps_t, eps, alpha_t, alpha, lower_t, lower,
                                           upper_t, upper), _STEP_FLAT_KINDS)
    if norm == "l2" and (kinds or order):
        raise ValueError("fastadv::pgd_: norm='l2' takes eps and alpha per example and the "
                         "bounds per channel (1-D tables), and order 0")
    _launch_flat_with(checked, x_adv, [grad, x_nat], params, kinds, order)


def traces_triton(device: torch.device, norm: str, *tensors: Tensor) -> bool:
    """Whether torch.compile traces a pgd_ step on ``device`` through its Triton kernel
    (True) or keeps the opaque op (False)."""
    return (_TRACEABLE_TRITON and device.type == "cuda"
            and backends.select(device, _STEP_KERNELS[norm]) == "triton"
            and not backends.triton_interpreted()
            and not any(t.dtype is torch.float64 for t in tensors))


if _TRACEABLE_TRITON:
    torch.library.triton_op("fastadv::_pgd_triton_", _pgd_triton, mutates_args={"x_adv"})

    def _pgd_functional(mode, op, types, args, kwargs):
        x_adv, grad, norm = args[0], args[1], args[11] if len(args) > 11 else None
        if not kwargs and len(args) in (12, 13) and traces_triton(x_adv.device, norm, x_adv,
                                                                 grad):
            with mode:
                return torch.ops.fastadv._pgd_triton_(*args, **kwargs)
        return mode.__torch_dispatch__(op, types, args, kwargs)

    from torch._subclasses.functional_tensor import FunctionalTensorMode

    torch.library.register_torch_dispatch("fastadv::pgd_", FunctionalTensorMode,
                                          _pgd_functional, lib=_LIB)


@_register("pgd_step")
def _pgd_step_op(x_adv: Tensor, *step_args) -> Tensor:
    out = x_adv.clone()
    _pgd_op(out, *step_args)
    return out


@torch.library.register_fake("fastadv::pgd_step", lib=_LIB)
def _(x_adv, grad, x_nat, *args) -> Tensor:
    return torch.empty_like(x_adv)


def _pgd_step_setup_context(ctx, inputs, output) -> None:
    x_adv, grad, x_nat, eps_t, eps, alpha_t, alpha, lower_t, lower, upper_t, upper, norm = inputs[:12]
    ctx.save_for_backward(x_adv, grad, x_nat, eps_t, alpha_t, lower_t, upper_t)
    ctx.scalars = (eps, alpha, lower, upper)
    ctx.norm = norm
    ctx.order = inputs[12] if len(inputs) > 12 else 0
    ctx.inputs = len(inputs)


def _pgd_step_backward(ctx, grad_out):
    # The vector-Jacobian product of the reference formula: d/dx_adv is 1 where the clamp
    # is inactive, d/dx_nat is 1 where a ball bound is active, d/dgrad is 0 for l-inf (sign)
    # and the derivative of g/||g|| for l2. The per-example/per-channel parameters are
    # treated as constants.
    x_adv, grad, x_nat, eps_t, alpha_t, lower_t, upper_t = ctx.saved_tensors
    eps, alpha, lower, upper = ctx.scalars
    params = (_scalar_or_tensor(eps_t, eps), _scalar_or_tensor(alpha_t, alpha),
              _scalar_or_tensor(lower_t, lower), _scalar_or_tensor(upper_t, upper))
    if ctx.norm == "linf":
        def step(x, g, n):
            return reference.linf_step(x, g, n, *params, ctx.order)
    else:
        def step(x, g, n):
            return reference.l2_step(x, g, n, *params)
    _, vjp = torch.func.vjp(step, x_adv, grad, x_nat)
    d_x, d_grad, d_nat = vjp(grad_out.to(reference.compute_dtype(x_adv)))
    wanted = ctx.needs_input_grad
    d_x = d_x.to(x_adv.dtype) if wanted[0] else None
    d_grad = d_grad.to(grad.dtype) if wanted[1] and ctx.norm == "l2" else None
    d_nat = d_nat.to(x_nat.dtype) if wanted[2] else None
    return (d_x, d_grad, d_nat) + (None,) * (ctx.inputs - 3)


torch.library.register_autograd("fastadv::pgd_step", _pgd_step_backward,
                                setup_context=_pgd_step_setup_context, lib=_LIB)


@_register("random_init_")
def _random_init_op(
    x_adv: Tensor, x_nat: Tensor, seed: Tensor,
    eps_t: Optional[Tensor], eps: float,
    lower_t: Optional[Tensor], lower: float,
    upper_t: Optional[Tensor], upper: float,
    order: int = 0,
) -> None:
    _check_devices("random_init_", x_adv, x_nat=x_nat, seed=seed, eps_t=eps_t,
                   lower_t=lower_t, upper_t=upper_t)
    if order:
        _order("random_init_", order)
    params, kinds = _kinds("random_init_", x_adv, (eps_t, eps, lower_t, lower, upper_t, upper),
                           _RANDOM_FLAT_KINDS)
    backend = backends.select(x_adv.device, "random_init")
    if _uses_reference(backend, x_adv):
        x_adv.copy_(reference.random_init(
            x_adv, x_nat, seed, _scalar_or_tensor(eps_t, eps),
            _scalar_or_tensor(lower_t, lower), _scalar_or_tensor(upper_t, upper), order,
        ))
        return
    try:
        _launch_flat(backend, "random_init", x_adv, [x_nat], params, kinds, order, lead=(seed,))
    except _TritonFailed:  # x_adv untouched; the next backend takes this call and later ones
        _random_init_op(x_adv, x_nat, seed, eps_t, eps, lower_t, lower, upper_t, upper, order)
        return
    _wrote(x_adv)


@torch.library.register_fake("fastadv::random_init_", lib=_LIB)
def _(x_adv, x_nat, seed, *args) -> None:
    return None


@_register("keep_best_")
def _keep_best_op(best_x: Tensor, best_loss: Tensor, x: Tensor, loss: Tensor) -> None:
    _check_devices("keep_best_", best_x, best_loss=best_loss, x=x, loss=loss)
    backend = backends.select(best_x.device, "keep_best")
    if _uses_reference(backend, best_x, best_loss):
        new_x, new_loss = reference.keep_best(best_x, best_loss, x, loss)
        best_x.copy_(new_x)
        best_loss.copy_(new_loss)
        return
    layout = flat_layout(best_x)
    work_x = best_x if layout is not None else best_x.contiguous()
    work_loss = best_loss if best_loss.is_contiguous() else best_loss.contiguous()
    x = x if same_strides(x, work_x) else torch.empty_like(work_x).copy_(x)
    example_size = flat_layout(work_x)[0]
    try:
        _kernel(backend, "keep_best")(work_x, work_loss, x, loss.contiguous(), example_size)
    except _TritonFailed:  # nothing written; the next backend takes this call and later ones
        _keep_best_op(best_x, best_loss, x, loss)
        return
    if work_x is not best_x:
        best_x.copy_(work_x)
    if work_loss is not best_loss:
        best_loss.copy_(work_loss)
    _wrote(best_x, best_loss)


@torch.library.register_fake("fastadv::keep_best_", lib=_LIB)
def _(best_x, best_loss, x, loss) -> None:
    return None


# --------------------------------------------------------------------------- public API


def ball_args(x_adv: Tensor, eps, alpha, lower, upper, norm) -> tuple:
    """Validated, normalised ``(eps, alpha, lower, upper, norm)`` in the form the registered
    ``fastadv::pgd_`` takes after its three tensors (its ``order`` keeps its default, 0, the
    ``pgd_`` step). Loops that step many times with the same parameters check them once with
    this and call ``torch.ops.fastadv.pgd_`` directly (``pgd_delta_``'s form: pass the order
    ``DELTA_ORDERS[order]`` after them)."""
    norm = _checks.norm(norm)
    if norm == "linf":
        eps = _checks.ball_param("eps", eps, x_adv, nonnegative=True, finite=False)
        alpha = _checks.ball_param("alpha", alpha, x_adv, nonnegative=False, finite=True)
        lower = _checks.bound("lower", lower, x_adv)
        upper = _checks.bound("upper", upper, x_adv)
    else:  # the l2 kernels take a radius and step per example, bounds per channel
        eps = _checks.per_example("eps", eps, x_adv, nonnegative=True, finite=False)
        alpha = _checks.per_example("alpha", alpha, x_adv, nonnegative=False, finite=True)
        lower = _checks.per_channel("lower", lower, x_adv)
        upper = _checks.per_channel("upper", upper, x_adv)
    _checks.ordered_bounds(lower, upper, x_adv)
    return (*eps, *alpha, *lower, *upper, norm)


# The rounding orders of each form (reference.linf_step): the kernels' `order`.
IMAGE_ORDERS = {"fused": 0, "via_delta": 1}
DELTA_ORDERS = {"delta_box": 2, "image_box": 3}
_IMAGE_KEYWORDS = ("eps", "alpha", "lower", "upper", "norm", "order")
_DELTA_KEYWORDS = ("eps", "alpha", "lower", "upper", "order")


def _step_args(op, x_adv, grad, x_nat, eps, alpha, lower, upper, norm, order, unknown,
               delta: bool) -> tuple:
    """The registered step op's arguments, checked (keywords, tensors, ``ball_args``, the
    order, memory), with the start check of the form."""
    if unknown:
        _checks.unknown_keywords(op, unknown, _DELTA_KEYWORDS if delta else _IMAGE_KEYWORDS,
                                 delta_form=delta)
    if eps is _checks.REQUIRED or alpha is _checks.REQUIRED:
        _checks.required(op, eps=eps, alpha=alpha)
    names = ("delta", "x") if delta else ("x_adv", "x_nat")
    _checks.step_tensors(x_adv, grad, x_nat, names)
    code = _checks.order(op, order, DELTA_ORDERS if delta else IMAGE_ORDERS)
    ball = ball_args(x_adv, eps, alpha, lower, upper, norm)
    if code and norm == "l2":
        raise ValueError(f"{op}: order={order!r} is an l-inf order; norm='l2' steps with "
                         f"order='fused'")
    _checks.separate(op, names[1], x_nat, names[0], x_adv)
    _checks.starts_in_box(op, x_adv, x_nat, ball[0:2], ball[4:6], ball[6:8], delta=delta)
    return (x_adv, grad, x_nat, *ball, code)


def _step_in_place(op, written, grad, centre, eps, alpha, lower, upper, norm, order, unknown,
                   delta: bool) -> Tensor:
    args = _step_args(op, written, grad, centre, eps, alpha, lower, upper, norm, order,
                      unknown, delta)
    with torch.no_grad():
        torch.ops.fastadv.pgd_(*args)
    _checks.mark_written(written)  # its next step needs no start check
    return written


def pgd_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, *, eps=_checks.REQUIRED,
         alpha=_checks.REQUIRED, lower=0.0, upper=1.0, norm: str = "linf",
         order: str = "fused", **unknown) -> Tensor:
    r"""One PGD step on an image, fused and in place on ``x_adv``; returns ``x_adv``.

    ``norm="linf"`` (Madry et al.), with :math:`v = x_{adv} + \alpha\,\mathrm{sign}(g)`:

    - ``order="fused"``: :math:`x_{adv} \leftarrow \mathrm{clamp}\big(v,\;
      \max(\mathrm{lower}, x_{nat} - \epsilon),\; \min(\mathrm{upper}, x_{nat} + \epsilon)\big)`:
      the ball and the valid range in one clamp with combined bounds, so in fp32 the result
      lies exactly in both (Madry et al.'s code, fastadv's attacks).
    - ``order="via_delta"``: :math:`\mathrm{clamp}(x_{nat} + \mathrm{clamp}(v - x_{nat},
      -\epsilon, \epsilon), \mathrm{lower}, \mathrm{upper})`, torchattacks' order, bit for
      bit (the two differ in the last bit where ``v - x_nat`` rounds).

    sign(0) = sign(NaN) = 0. ``norm="l2"``: per example ``v = x_adv + α·g/‖g‖₂`` (no step
    where ``g = 0``; NaN entries of ``g`` count as 0), projected onto ``‖v − x_nat‖₂ ≤ ε``,
    then clipped to [lower, upper] (``order="fused"`` only).

    Args:
        x_adv: ``[B, ...]`` float32/float16/bfloat16 (float64 runs the reference); any strides.
        grad: ``∇_x L`` at ``x_adv``, same shape and device, any floating dtype.
        x_nat: the clean inputs, same shape, device and dtype as ``x_adv``, in other memory.
        eps: radius, ``≥ 0``; alpha: step size (negative descends). Each a float, a tensor
            ``[B]`` (per example) or, for l-inf, a tensor that broadcasts against ``x_adv``
            along the batch and channel dims only: ``[C, 1, 1]``, ``[1, C, 1, 1]``,
            ``[B, C, 1, 1]`` (e.g. ``(8/255)/std`` for inputs normalised outside the model).
            ``eps`` may be ``math.inf`` (or hold it): no projection to the ball, only the clip
            to [lower, upper] (N-FGSM's step, whose start lies up to 2ε away); a k·ε ball is
            ``eps=k*eps``.
        lower, upper: the valid range: floats or, for l-inf, tensors that broadcast to
            ``x_adv`` (``[C, 1, 1]`` per channel, the kernels' fast path; ``x_adv``'s shape per
            element; anything between). l2: floats or per channel.
        norm: ``"linf"`` or ``"l2"``.
        order: ``"fused"`` or ``"via_delta"`` (above).

    Math in fp32, stored in ``x_adv``'s dtype. Runs under ``torch.no_grad()`` like an
    optimizer step. Raises ``TypeError``/``ValueError`` naming the bad argument (and the
    keyword meant, for a near-miss such as ``epsilon=``) before anything is written. Warns
    (``fastadv.errors.FormWarning``) when ``x_adv`` arrives outside its box (a perturbation
    passed here, or normalised inputs with the default bounds): see :func:`pgd_delta_`.
    """
    return _step_in_place("pgd_", x_adv, grad, x_nat, eps, alpha, lower, upper, norm, order,
                          unknown, delta=False)


def pgd_delta_(delta: Tensor, grad: Tensor, x: Tensor, *, eps=_checks.REQUIRED,
               alpha=_checks.REQUIRED, lower=0.0, upper=1.0, order: str = "delta_box",
               **unknown) -> Tensor:
    r"""One l-inf PGD step on a perturbation, fused and in place on ``delta``; returns
    ``delta``. The form of most research code, which keeps ``delta`` with ``x + delta`` the
    adversarial input. With :math:`v = \delta + \alpha\,\mathrm{sign}(g)`:

    - ``order="delta_box"`` (robust_overfitting, fast_adversarial and most PGD code):
      :math:`\delta \leftarrow \mathrm{clamp}(\mathrm{clamp}(v, -\epsilon, \epsilon),\;
      \mathrm{lower} - x,\; \mathrm{upper} - x)`;
    - ``order="image_box"`` (advertorch): :math:`\delta \leftarrow \mathrm{clamp}(x +
      \mathrm{clamp}(v, -\epsilon, \epsilon), \mathrm{lower}, \mathrm{upper}) - x`.

    Bit for bit the two lines such code writes (``clamp`` being ``min(max(·, lo), hi)``), in
    fp32; for fp16/bf16 those lines computed in fp32 and rounded once at the end. sign(0) = 0;
    a NaN gradient counts as 0 (``torch.sign`` would give NaN).

    Args:
        delta: ``[B, ...]`` float32/float16/bfloat16 (float64 runs the reference), any strides.
        grad: ``∇_δ L`` (= ``∇_x L`` at ``x + delta``), same shape and device.
        x: the clean inputs, same shape, device and dtype, in other memory.
        eps, alpha, lower, upper: as in :func:`pgd_` (l-inf): floats, ``[B]``, per channel
            (``[C, 1, 1]``, ``[1, C, 1, 1]``, ``[B, C, 1, 1]``), bounds also per element.
            ``eps`` may be ``math.inf``: no projection to the ball, only the clip to [lower,
            upper] (N-FGSM's step); a k·ε ball is ``eps=k*eps``.
        order: ``"delta_box"`` or ``"image_box"``.

    Raises like :func:`pgd_`; warns (``FormWarning``) when ``delta`` arrives outside its box
    ``[max(-eps, lower - x), min(eps, upper - x)]`` (an image passed here).
    """
    return _step_in_place("pgd_delta_", delta, grad, x, eps, alpha, lower, upper, "linf",
                          order, unknown, delta=True)


def pgd_step(x_adv: Tensor, grad: Tensor, x_nat: Tensor, *, eps=_checks.REQUIRED,
             alpha=_checks.REQUIRED, lower=0.0, upper=1.0, norm: str = "linf",
             order: str = "fused", **unknown) -> Tensor:
    """The functional, differentiable twin of :func:`pgd_`: returns the stepped tensor and
    leaves ``x_adv`` alone. Gradients flow to ``x_adv`` (where the clamp is inactive) and to
    ``x_nat`` (where a ball bound is active); to ``grad`` only for ``norm="l2"`` (the
    direction ``g/‖g‖``); ``eps``, ``alpha``, ``lower`` and ``upper`` are constants."""
    args = _step_args("pgd_step", x_adv, grad, x_nat, eps, alpha, lower, upper, norm, order,
                      unknown, delta=False)
    out = torch.ops.fastadv.pgd_step(*args)
    _checks.mark_written(out)  # a functional loop's next step needs no start check
    return out


def pgd_delta_step(delta: Tensor, grad: Tensor, x: Tensor, *, eps=_checks.REQUIRED,
                   alpha=_checks.REQUIRED, lower=0.0, upper=1.0, order: str = "delta_box",
                   **unknown) -> Tensor:
    """The functional, differentiable twin of :func:`pgd_delta_` (gradients as in
    :func:`pgd_step`, to ``delta`` and ``x``)."""
    args = _step_args("pgd_delta_step", delta, grad, x, eps, alpha, lower, upper, "linf",
                      order, unknown, delta=True)
    out = torch.ops.fastadv.pgd_step(*args)
    _checks.mark_written(out)
    return out


def _draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    # Drawn on the device (no host sync, CUDA-graph safe): kernels read it there.
    source = generator.device if generator is not None else device
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=source,
                         generator=generator)
    return seed.to(device, non_blocking=True)


def _start_args(op, written, centre, eps, lower, upper, generator, unknown, delta: bool):
    if unknown:
        _checks.unknown_keywords(op, unknown, ("eps", "lower", "upper", "generator")
                                 + (("order",) if delta else ()), delta_form=delta)
    if eps is _checks.REQUIRED:
        _checks.required(op, eps=eps)
    names = ("delta", "x") if delta else ("x_adv", "x_nat")
    written = _checks.batched(names[0], written)
    _checks.like(names[1], centre, names[0], written, same_dtype=True)
    eps = _checks.ball_param("eps", eps, written, nonnegative=True, finite=True)
    lower = _checks.bound("lower", lower, written)
    upper = _checks.bound("upper", upper, written)
    _checks.ordered_bounds(lower, upper, written)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    _checks.separate(op, names[1], centre, names[0], written)
    return eps, lower, upper


def random_init_(x_adv: Tensor, x_nat: Tensor, *, eps=_checks.REQUIRED, lower=0.0, upper=1.0,
                 generator: Optional[torch.Generator] = None, **unknown) -> Tensor:
    r"""The random start of PGD, in place on ``x_adv``; returns ``x_adv``.

    .. math:: x_{adv} \leftarrow \mathrm{clamp}\big(x_{nat} + \epsilon\,U(-1, 1),\;
              \max(\mathrm{lower}, x_{nat} - \epsilon),\; \min(\mathrm{upper}, x_{nat} + \epsilon)\big)

    ``U`` comes from a counter-based Philox generator keyed by one seed drawn from
    ``generator`` (the device's default when None): the same seed gives the same start on
    every backend. Shapes and the types of ``eps``/``lower``/``upper`` as in :func:`pgd_`
    (l-inf).
    """
    eps, lower, upper = _start_args("random_init_", x_adv, x_nat, eps, lower, upper, generator,
                                    unknown, delta=False)
    seed = _draw_seed(x_adv.device, generator)
    with torch.no_grad():
        torch.ops.fastadv.random_init_(x_adv, x_nat, seed, *eps, *lower, *upper)
    _checks.mark_written(x_adv)
    return x_adv


def random_delta_(delta: Tensor, x: Tensor, *, eps=_checks.REQUIRED, lower=0.0, upper=1.0,
                  order: str = "delta_box", generator: Optional[torch.Generator] = None,
                  **unknown) -> Tensor:
    r"""The random start of :func:`pgd_delta_`, in place on ``delta``; returns ``delta``.
    With :math:`n = \epsilon\,U(-1, 1)` (the Philox draw of :func:`random_init_`):

    - ``order="delta_box"``: :math:`\delta \leftarrow \mathrm{clamp}(n, \mathrm{lower} - x,
      \mathrm{upper} - x)` (robust_overfitting's ``uniform_`` then ``clamp``);
    - ``order="image_box"``: :math:`\delta \leftarrow \mathrm{clamp}(x + n, \mathrm{lower},
      \mathrm{upper}) - x` (advertorch's).

    The numbers are Philox's, not ``torch.rand``'s: the same start on every backend.
    """
    code = _checks.order("random_delta_", order, DELTA_ORDERS)
    eps, lower, upper = _start_args("random_delta_", delta, x, eps, lower, upper, generator,
                                    unknown, delta=True)
    seed = _draw_seed(delta.device, generator)
    with torch.no_grad():
        torch.ops.fastadv.random_init_(delta, x, seed, *eps, *lower, *upper, code)
    _checks.mark_written(delta)
    return delta


def keep_best_(best_x: Tensor, best_loss: Tensor, x: Tensor, loss: Tensor):
    """The batched-restart reduction, in place: per example ``b``, where
    ``loss[b] > best_loss[b]`` (strictly: ties keep the earlier candidate and a NaN loss never
    wins), ``best_x[b] ← x[b]`` and ``best_loss[b] ← loss[b]``. Returns ``(best_x, best_loss)``.

    Args:
        best_x, x: ``[B, ...]``, same shape, dtype and device.
        best_loss, loss: ``[B]`` floating (``loss`` is cast to ``best_loss``'s dtype); start
            ``best_loss`` at ``-inf`` to take the first candidate.
    """
    best_x = _checks.batched("best_x", best_x)
    _checks.like("x", x, "best_x", best_x, same_dtype=True)
    best_loss = _checks.tensor("best_loss", best_loss)
    loss = _checks.tensor("loss", loss)
    batch = best_x.shape[0]
    for name, t in (("best_loss", best_loss), ("loss", loss)):
        if t.shape != (batch,):
            raise ValueError(f"{name} must have shape [B] = [{batch}], got {list(t.shape)}")
        if t.device != best_x.device:
            raise ValueError(f"{name} is on {t.device} but best_x is on {best_x.device}")
    with torch.no_grad():
        torch.ops.fastadv.keep_best_(best_x, best_loss, x, loss.to(best_loss.dtype))
    return best_x, best_loss
