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


def _launch_flat(backend: str, name: str, x: Tensor, reads: list, *params) -> None:
    """Run kernel `name` on x (written) and `reads`, all walked flat in x's memory order.
    Tensors without that one dense layout are copied into it (and x back afterwards)."""
    _launch_flat_with(_kernel(backend, name), x, reads, *params)


def _launch_flat_with(launch, x: Tensor, reads: list, *params) -> None:
    if x.is_contiguous() and all(r.is_contiguous() for r in reads):  # the per-step case
        numel, batch = x.numel(), x.shape[0]
        example_size = max(numel // batch if batch else 1, 1)
        # As flat_layout: 1 where dim 1 holds at most one element (its stride is then any).
        channel_div = x.stride(1) if x.dim() > 1 and x.shape[1] > 1 and numel else 1
        launch(x, *reads, *params, example_size, channel_div)
        return
    layout = flat_layout(x)
    work = x if layout is not None else x.contiguous()
    if layout is None:
        layout = flat_layout(work)
    reads = [r if same_strides(r, work) else torch.empty_like(work, dtype=r.dtype).copy_(r)
             for r in reads]
    launch(work, *reads, *params, *layout)
    if work is not x:
        x.copy_(work)


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
_STEP_ARGS = ("Tensor grad, Tensor x_nat, Tensor? eps_per_example, float eps, "
              "Tensor? alpha_per_example, float alpha, Tensor? lower_per_channel, float lower, "
              "Tensor? upper_per_channel, float upper, str norm")
_LIB.define(f"pgd_(Tensor(a!) x_adv, {_STEP_ARGS}) -> ()")
_LIB.define(f"pgd_step(Tensor x_adv, {_STEP_ARGS}) -> Tensor")
_LIB.define("random_init_(Tensor(a!) x_adv, Tensor x_nat, Tensor seed, Tensor? eps_per_example, "
            "float eps, Tensor? lower_per_channel, float lower, Tensor? upper_per_channel, "
            "float upper) -> ()")
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
    eps_per_example: Optional[Tensor], eps: float,
    alpha_per_example: Optional[Tensor], alpha: float,
    lower_per_channel: Optional[Tensor], lower: float,
    upper_per_channel: Optional[Tensor], upper: float,
    norm: str,
) -> None:
    device = x_adv.device
    if (grad.device != device or x_nat.device != device or eps_per_example is not None
            or alpha_per_example is not None or lower_per_channel is not None
            or upper_per_channel is not None):  # the float-parameter case checks two devices
        _check_devices("pgd_", x_adv, grad=grad, x_nat=x_nat, eps_per_example=eps_per_example,
                       alpha_per_example=alpha_per_example, lower_per_channel=lower_per_channel,
                       upper_per_channel=upper_per_channel)
    kernel = _STEP_KERNELS.get(norm)
    if kernel is None:  # the registered op called directly with another norm
        _checks.norm(norm)
    backend = backends.select(device, kernel)
    if _uses_reference(backend, x_adv, grad):
        step = reference.linf_step if norm == "linf" else reference.l2_step
        x_adv.copy_(step(
            x_adv, grad, x_nat,
            _scalar_or_tensor(eps_per_example, eps), _scalar_or_tensor(alpha_per_example, alpha),
            _scalar_or_tensor(lower_per_channel, lower), _scalar_or_tensor(upper_per_channel, upper),
        ))
        return
    try:
        _launch_flat(backend, kernel, x_adv, [grad, x_nat],
                     eps_per_example, eps, alpha_per_example, alpha,
                     lower_per_channel, lower, upper_per_channel, upper)
    except _TritonFailed:  # x_adv untouched; the next backend takes this call and later ones
        _pgd_op(x_adv, grad, x_nat, eps_per_example, eps, alpha_per_example, alpha,
                lower_per_channel, lower, upper_per_channel, upper, norm)
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
    eps_per_example: Optional[Tensor], eps: float,
    alpha_per_example: Optional[Tensor], alpha: float,
    lower_per_channel: Optional[Tensor], lower: float,
    upper_per_channel: Optional[Tensor], upper: float,
    norm: str,
) -> None:
    from . import kernels

    name = _STEP_KERNELS.get(norm) or _checks.norm(norm)  # which raises for another norm
    launch = getattr(kernels, name)

    def checked(x, *args):  # the checks of _triton_launcher, on the tracer's tensors too
        _kernel_checks.launcher_args(name, x, args)
        launch(x, *args)

    _launch_flat_with(checked, x_adv, [grad, x_nat], eps_per_example, eps, alpha_per_example,
                      alpha, lower_per_channel, lower, upper_per_channel, upper)


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
        x_adv, grad, norm = args[0], args[1], args[-1]
        if not kwargs and len(args) == 12 and traces_triton(x_adv.device, norm, x_adv, grad):
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
    x_adv, grad, x_nat, eps_t, eps, alpha_t, alpha, lower_t, lower, upper_t, upper, norm = inputs
    ctx.save_for_backward(x_adv, grad, x_nat, eps_t, alpha_t, lower_t, upper_t)
    ctx.scalars = (eps, alpha, lower, upper)
    ctx.norm = norm


def _pgd_step_backward(ctx, grad_out):
    # The vector-Jacobian product of the reference formula: d/dx_adv is 1 where the clamp
    # is inactive, d/dx_nat is 1 where a ball bound is active, d/dgrad is 0 for l-inf (sign)
    # and the derivative of g/||g|| for l2. The per-example/per-channel parameters are
    # treated as constants.
    x_adv, grad, x_nat, eps_t, alpha_t, lower_t, upper_t = ctx.saved_tensors
    eps, alpha, lower, upper = ctx.scalars
    params = (_scalar_or_tensor(eps_t, eps), _scalar_or_tensor(alpha_t, alpha),
              _scalar_or_tensor(lower_t, lower), _scalar_or_tensor(upper_t, upper))
    step = reference.linf_step if ctx.norm == "linf" else reference.l2_step
    _, vjp = torch.func.vjp(lambda x, g, n: step(x, g, n, *params), x_adv, grad, x_nat)
    d_x, d_grad, d_nat = vjp(grad_out.to(reference.compute_dtype(x_adv)))
    wanted = ctx.needs_input_grad
    d_x = d_x.to(x_adv.dtype) if wanted[0] else None
    d_grad = d_grad.to(grad.dtype) if wanted[1] and ctx.norm == "l2" else None
    d_nat = d_nat.to(x_nat.dtype) if wanted[2] else None
    return (d_x, d_grad, d_nat) + (None,) * 9


torch.library.register_autograd("fastadv::pgd_step", _pgd_step_backward,
                                setup_context=_pgd_step_setup_context, lib=_LIB)


@_register("random_init_")
def _random_init_op(
    x_adv: Tensor, x_nat: Tensor, seed: Tensor,
    eps_per_example: Optional[Tensor], eps: float,
    lower_per_channel: Optional[Tensor], lower: float,
    upper_per_channel: Optional[Tensor], upper: float,
) -> None:
    _check_devices("random_init_", x_adv, x_nat=x_nat, seed=seed, eps_per_example=eps_per_example,
                   lower_per_channel=lower_per_channel, upper_per_channel=upper_per_channel)
    backend = backends.select(x_adv.device, "random_init")
    if _uses_reference(backend, x_adv):
        x_adv.copy_(reference.random_init(
            x_adv, x_nat, seed, _scalar_or_tensor(eps_per_example, eps),
            _scalar_or_tensor(lower_per_channel, lower), _scalar_or_tensor(upper_per_channel, upper),
        ))
        return
    try:
        _launch_flat(backend, "random_init", x_adv, [x_nat], seed, eps_per_example, eps,
                     lower_per_channel, lower, upper_per_channel, upper)
    except _TritonFailed:  # x_adv untouched; the next backend takes this call and later ones
        _random_init_op(x_adv, x_nat, seed, eps_per_example, eps, lower_per_channel, lower,
                        upper_per_channel, upper)
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
    ``fastadv::pgd_`` takes after its three tensors. Loops that step many times with the same
    parameters check them once with this and call ``torch.ops.fastadv.pgd_`` directly."""
    norm = _checks.norm(norm)
    eps = _checks.per_example("eps", eps, x_adv, nonnegative=True, finite=False)
    alpha = _checks.per_example("alpha", alpha, x_adv, nonnegative=False, finite=True)
    lower = _checks.per_channel("lower", lower, x_adv)
    upper = _checks.per_channel("upper", upper, x_adv)
    _checks.ordered_bounds(lower, upper)
    return (*eps, *alpha, *lower, *upper, norm)


def _step_args(x_adv, grad, x_nat, eps, alpha, lower, upper, norm) -> tuple:
    """The registered step ops' arguments, checked: the three tensors, then ``ball_args``."""
    _checks.step_tensors(x_adv, grad, x_nat)
    return (x_adv, grad, x_nat, *ball_args(x_adv, eps, alpha, lower, upper, norm))


def pgd_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, *, eps, alpha, lower=0.0, upper=1.0,
         norm: str = "linf") -> Tensor:
    r"""One PGD step, fused and in place on ``x_adv``; returns ``x_adv``.

    ``norm="linf"`` (Madry et al.):

    .. math:: x_{adv} \leftarrow \mathrm{clamp}\big(x_{adv} + \alpha\,\mathrm{sign}(g),\;
              \max(\mathrm{lower}, x_{nat} - \epsilon),\; \min(\mathrm{upper}, x_{nat} + \epsilon)\big)

    The projection onto the ε-ball and the clip to the valid range are one clamp with
    combined bounds, so in fp32 the result lies exactly in both. sign(0) = sign(NaN) = 0.

    ``norm="l2"``: per example ``v = x_adv + α·g/‖g‖₂`` (no step where ``g = 0``; NaN entries
    of ``g`` count as 0), projected onto ``‖v − x_nat‖₂ ≤ ε``, then clipped to [lower, upper].

    Args:
        x_adv: ``[B, ...]`` float32/float16/bfloat16 (float64 runs the reference); any strides.
        grad: ``∇_x L`` at ``x_adv``, same shape and device, any floating dtype.
        x_nat: the clean inputs, same shape, device and dtype as ``x_adv``.
        eps: radius, ``≥ 0``: a float or a tensor ``[B]`` (per example).
        alpha: step size (negative descends): a float or a tensor ``[B]``.
        lower, upper: the valid range: floats or tensors broadcasting along the channel dim
            (``[C, 1, 1]`` for ``[B, C, H, W]``), e.g. for inputs normalised outside the model.
        norm: ``"linf"`` or ``"l2"``.

    Math in fp32, stored in ``x_adv``'s dtype. Runs under ``torch.no_grad()`` like an
    optimizer step. Raises ``TypeError``/``ValueError`` naming the bad argument before
    anything is written.
    """
    args = _step_args(x_adv, grad, x_nat, eps, alpha, lower, upper, norm)
    with torch.no_grad():
        torch.ops.fastadv.pgd_(*args)
    return x_adv


def pgd_step(x_adv: Tensor, grad: Tensor, x_nat: Tensor, *, eps, alpha, lower=0.0, upper=1.0,
             norm: str = "linf") -> Tensor:
    """The functional, differentiable twin of :func:`pgd_`: returns the stepped tensor and
    leaves ``x_adv`` alone. Gradients flow to ``x_adv`` (where the clamp is inactive) and to
    ``x_nat`` (where a ball bound is active); to ``grad`` only for ``norm="l2"`` (the
    direction ``g/‖g‖``); ``eps``, ``alpha``, ``lower`` and ``upper`` are constants."""
    return torch.ops.fastadv.pgd_step(*_step_args(x_adv, grad, x_nat, eps, alpha, lower, upper, norm))


def _draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    # Drawn on the device (no host sync, CUDA-graph safe): kernels read it there.
    source = generator.device if generator is not None else device
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=source,
                         generator=generator)
    return seed.to(device, non_blocking=True)


def random_init_(x_adv: Tensor, x_nat: Tensor, *, eps, lower=0.0, upper=1.0,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    r"""The random start of PGD, in place on ``x_adv``; returns ``x_adv``.

    .. math:: x_{adv} \leftarrow \mathrm{clamp}\big(x_{nat} + \epsilon\,U(-1, 1),\;
              \max(\mathrm{lower}, x_{nat} - \epsilon),\; \min(\mathrm{upper}, x_{nat} + \epsilon)\big)

    ``U`` comes from a counter-based Philox generator keyed by one seed drawn from
    ``generator`` (the device's default when None): the same seed gives the same start on
    every backend. Shapes and the types of ``eps``/``lower``/``upper`` as in :func:`pgd_`.
    """
    x_adv = _checks.batched("x_adv", x_adv)
    _checks.like("x_nat", x_nat, "x_adv", x_adv, same_dtype=True)
    eps = _checks.per_example("eps", eps, x_adv, nonnegative=True, finite=True)
    lower = _checks.per_channel("lower", lower, x_adv)
    upper = _checks.per_channel("upper", upper, x_adv)
    _checks.ordered_bounds(lower, upper)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    seed = _draw_seed(x_adv.device, generator)
    with torch.no_grad():
        torch.ops.fastadv.random_init_(x_adv, x_nat, seed, *eps, *lower, *upper)
    return x_adv


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
