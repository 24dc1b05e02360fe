"""Argument checking for the public ops: every check runs before any write, and every error
names the argument. Value checks on tensors (e.g. eps >= 0 per example) read the tensor, so
they are skipped while torch.compile traces or a CUDA graph captures; the attack loops check
once up front instead. A tensor parameter checked once is not read again while it is the same
tensor, unmodified (``_checked``): a user loop passing the same eps tensor every step syncs
with the host on the first step only."""

from __future__ import annotations

import difflib
import math
import numbers
import os
import sys
import warnings
import weakref

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

from . import reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def values_checkable(*tensors: Tensor) -> bool:
    """False while tracing or capturing, where reading a tensor's values is not possible
    (also for a tracer's tensors, e.g. under make_fx: fake or functional ones)."""
    if torch.compiler.is_compiling():
        return False
    if any(type(t) is not Tensor and _is_tracer_tensor(t) for t in tensors):
        return False
    # Only CUDA work is captured; torch.cuda.is_available() alone costs ~1 µs per call.
    return not (any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing())


def _is_tracer_tensor(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, (FakeTensor, FunctionalTensor))


def tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float16, bfloat16 or float64), "
            f"got {value.dtype}"
        )
    return value


def batched(name: str, value) -> Tensor:
    t = tensor(name, value)
    if t.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension (shape [B, ...]), got a 0-dim tensor")
    return t


def like(name: str, value, ref_name: str, ref: Tensor, *, same_dtype: bool) -> Tensor:
    t = tensor(name, value)
    if t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {list(ref.shape)}, got {list(t.shape)}"
        )
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if same_dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    return t


def step_tensors(x_adv, grad, x_nat, names=("x_adv", "x_nat")) -> None:
    """The checks of ``batched(x_adv)``, ``like("grad", same_dtype=False)`` and
    ``like(x_nat, same_dtype=True)``, combined into one expression because every step makes
    them; anything unusual takes the separate checks, which name what is wrong. ``names``:
    the written tensor's and the centre's (``("delta", "x")`` for the perturbation form)."""
    if (isinstance(x_adv, Tensor) and isinstance(grad, Tensor) and isinstance(x_nat, Tensor)
            and x_adv.dtype in SUPPORTED_DTYPES and grad.dtype in SUPPORTED_DTYPES
            and x_nat.dtype is x_adv.dtype and x_adv.dim() > 0
            and grad.shape == x_adv.shape and x_nat.shape == x_adv.shape
            and grad.device == x_adv.device and x_nat.device == x_adv.device):
        return
    written, centre = names
    batched(written, x_adv)
    like("grad", grad, written, x_adv, same_dtype=False)
    like(centre, x_nat, written, x_adv, same_dtype=True)


# Tensor parameters already checked, so that a loop passing the same eps/alpha/bound tensors
# every step neither reads their values again (a host sync on CUDA) nor converts them again.
# Keyed by the argument's role and the tensor's id; an entry is valid while it is the same
# live tensor at the same version (an in-place write bumps it) for the same device and
# batch. A handful of entries at most in practice; cleared when it grows past _CACHE_SIZE.
_checked: dict = {}
_CACHE_SIZE = 64


def _versions(tensors) -> tuple:
    return tuple(t._version for t in tensors)


def _cached(key, tensors: tuple, context):
    """The result remembered under key when it was computed for these same live tensors at
    their current versions and the same context (device and shape of x); else None."""
    hit = _checked.get(key)
    if hit is None:
        return None
    refs, versions, old_context, result = hit
    try:
        if (all(r() is t for r, t in zip(refs, tensors)) and _versions(tensors) == versions
                and old_context == context):
            return result
    except RuntimeError:  # an inference tensor has no version counter
        pass
    return None


def _remember(key, tensors: tuple, context, result) -> None:
    if not values_checkable(*tensors):  # fake or functional tensors while tracing: nothing to reuse
        return
    try:
        entry = (tuple(weakref.ref(t) for t in tensors), _versions(tensors), context, result)
    except (RuntimeError, TypeError):  # no version counter, or no weak reference
        return
    if len(_checked) >= _CACHE_SIZE:
        _checked.clear()
    _checked[key] = entry


def _context(x: Tensor) -> tuple:
    return x.device, x.dim(), x.shape[:2]


def _number(name: str, value) -> float:
    if type(value) is float:  # the common case, before the slower ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int beyond a double
        raise ValueError(f"{name} must be finite, got an int beyond the range of a float") \
            from None


def _check_number(name: str, value: float, *, nonnegative: bool, finite: bool) -> None:
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_values(name: str, values: Tensor, *, nonnegative: bool, finite: bool) -> None:
    bad = torch.isnan(values)
    if finite:
        bad |= torch.isinf(values)
    if nonnegative:
        bad |= values < 0
    if bad.any():
        _check_number(name, values[bad][0].item(), nonnegative=nonnegative, finite=finite)


def _shape_text(x: Tensor) -> str:
    return str(list(x.shape))


def _aligned(value: Tensor, x: Tensor):
    """value's shape aligned to x's dims from the right (numpy broadcasting), or None when
    value has more dims than x."""
    if value.dim() > x.dim():
        return None
    return [1] * (x.dim() - value.dim()) + list(value.shape)


def _examples_channels(x: Tensor) -> str:
    if x.dim() < 2:
        return f"[{x.shape[0]}]"
    return "[" + ", ".join([str(x.shape[0]), str(x.shape[1])] + ["1"] * (x.dim() - 2)) + "]"


def ball_param(name: str, value, x: Tensor, *, nonnegative: bool, finite: bool):
    """eps or alpha: a float, or a tensor of shape ``[]``, ``[B]`` (one per example) or any
    shape that broadcasts against x (numpy rules, aligned from the right) and varies along
    the batch dim (0) and the channel dim (1) only, e.g. ``[C, 1, 1]``, ``[1, C, 1, 1]`` or
    ``[B, C, 1, 1]`` for ``[B, C, H, W]``. Returns (None, float) for a float, else an fp32
    tensor on x's device: ``[B]`` where the values vary per example only, else the
    broadcast shape ``[1 or B, C, 1, ...]`` (x.dim() dims, contiguous); and 0.0."""
    if not isinstance(value, Tensor):
        number = _number(name, value)
        _check_number(name, number, nonnegative=nonnegative, finite=finite)
        return None, number
    key = ("ball_param", name, nonnegative, finite, id(value))
    hit = None if torch.compiler.is_compiling() else _cached(key, (value,), _context(x))
    if hit is not None:
        return hit
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    batch = x.shape[0]
    rule = (f"{name} must be a float, a tensor [B] = [{batch}] (one per example) or a tensor "
            f"that broadcasts against x {_shape_text(x)} along the batch and channel dims "
            f"only (e.g. {_examples_channels(x)} or its per-channel form with 1 for B)")
    if value.dim() == 1 and value.shape[0] in (batch, 1):
        shape = [value.shape[0]] + [1] * (x.dim() - 1)
    else:
        shape = _aligned(value, x)
        if value.dim() == 1 or shape is None or any(
                size not in (1, x.shape[d]) for d, size in enumerate(shape)):
            raise ValueError(f"{rule}; got shape {list(value.shape)}")
        spatial = [d for d, size in enumerate(shape) if d >= 2 and size != 1]
        if spatial:
            raise ValueError(f"{rule}; got shape {list(value.shape)}, which varies along dim "
                             f"{spatial[0]} of x: eps and alpha are constant over an example's "
                             f"positions (use per-element lower/upper bounds for a box that "
                             f"varies there)")
    if values_checkable(value):
        _check_values(name, value.detach(), nonnegative=nonnegative, finite=finite)
    values = value.detach().to(device=x.device, dtype=torch.float32).reshape(shape)
    if x.dim() < 2 or shape[1] == 1:  # per example (or one value): the [B] table
        per = values.reshape(-1).expand(batch).contiguous()
    else:
        per = values.contiguous()
    result = (per, 0.0)
    _remember(key, (value,), _context(x), result)
    return result


def per_example(name: str, value, x: Tensor, *, nonnegative: bool, finite: bool):
    """:func:`ball_param` restricted to a float or ``[B]``/``[]`` (l2's radius and step)."""
    result = ball_param(name, value, x, nonnegative=nonnegative, finite=finite)
    if result[0] is not None and result[0].dim() != 1:
        raise ValueError(f"{name} must be a float or a tensor of shape [B] = [{x.shape[0]}] "
                         f"(one per example) for norm='l2', got shape {list(value.shape)}")
    return result


def bound(name: str, value, x: Tensor):
    """lower or upper: a float, or a tensor that broadcasts to x (numpy rules, aligned from
    the right: ``[C, 1, 1]`` per channel, x's shape per element, or anything between).
    Returns (None, float) for a float; else an fp32 tensor ``[C]`` (``[1]`` when x has no
    channel dim) where it varies along the channel dim at most (the kernels' fast path), or
    one shaped and laid out like x otherwise (per element); and 0.0."""
    if not isinstance(value, Tensor):
        number = _number(name, value)
        if math.isnan(number):
            raise ValueError(f"{name} must not be NaN")
        return None, number
    key = ("bound", name, id(value))
    context = (x.device, tuple(x.shape), x.stride())
    hit = None if torch.compiler.is_compiling() else _cached(key, (value,), context)
    if hit is not None:
        return hit
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    shape = _aligned(value, x)
    if shape is None or any(size not in (1, x.shape[d]) for d, size in enumerate(shape)):
        hint = [x.shape[1]] + [1] * (x.dim() - 2) if x.dim() >= 2 else [x.shape[0]]
        raise ValueError(
            f"{name} must be a float or a tensor that broadcasts to x {_shape_text(x)} "
            f"(numpy rules, aligned from the right: e.g. {hint} per channel, "
            f"{_shape_text(x)} per element), got shape {list(value.shape)}")
    if values_checkable(value) and torch.isnan(value).any():
        raise ValueError(f"{name} must not be NaN")
    values = value.detach().to(device=x.device, dtype=torch.float32)
    channel_only = all(size == 1 or d == 1 for d, size in enumerate(shape))
    if channel_only:
        flat = values.reshape(-1)
        if flat.numel() == 1 and x.dim() >= 2:
            flat = flat.expand(x.shape[1])
        result = (flat.contiguous(), 0.0)
    else:  # per element, in x's memory order so that the kernels walk it with x
        full = torch.empty_like(x, dtype=torch.float32)  # x's strides where x is dense
        result = (full.copy_(values.reshape(shape).expand(x.shape)), 0.0)
    if values_checkable(value, x):  # never a tracer's tensor for a later eager call
        _remember(key, (value,), context, result)
        if not channel_only:  # an x-sized copy: freed with the user's tensor, not kept
            weakref.finalize(value, _checked.pop, key, None)
    return result


def per_channel(name: str, value, x: Tensor):
    """:func:`bound` restricted to a float or a per-channel tensor (l2's bounds)."""
    result = bound(name, value, x)
    if result[0] is not None and result[0].dim() != 1:
        raise ValueError(f"{name} must be a float or a tensor broadcasting along the channel "
                         f"dim of x {_shape_text(x)} only for norm='l2', got shape "
                         f"{list(value.shape)}")
    return result


def _value(normalised: tuple):
    """A normalised (tensor or None, float) parameter as the reference takes it."""
    return normalised[0] if normalised[0] is not None else normalised[1]


def ordered_bounds(lower, upper, x: Tensor) -> None:
    """lower <= upper everywhere (checked where the values are readable)."""
    lo_t, lo = lower
    hi_t, hi = upper
    if lo_t is None and hi_t is None:
        if lo > hi:
            raise ValueError(f"lower must be <= upper, got lower={lo} > upper={hi}")
        return
    tensors = tuple(t for t in (lo_t, hi_t) if t is not None)
    if values_checkable(*tensors):
        key = ("ordered_bounds", id(lo_t), lo, id(hi_t), hi)
        if _cached(key, tensors, None) is not None:
            return
        device = tensors[0].device  # a float bound joins the tensor there (no copy back)
        lo_v = torch.as_tensor(reference.per_channel(_value(lower), x, torch.float32),
                               device=device)
        hi_v = torch.as_tensor(reference.per_channel(_value(upper), x, torch.float32),
                               device=device)
        if (lo_v > hi_v).any():
            where = "in every channel" if all(t.dim() == 1 for t in tensors) else "everywhere"
            raise ValueError(f"lower must be <= upper {where}")
        _remember(key, tensors, None, True)


def norm(value) -> str:
    if value not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {value!r}")
    return value


# --------------------------------------------------------------------------- misuse


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()  # the default of a keyword argument that must be given

# Keywords other PGD code uses for fastadv's (torchattacks, advertorch, robustness,
# ART and the research codebases), so that a near-miss gets the right name.
_KEYWORD_ALIASES = {
    "epsilon": "eps", "radius": "eps", "eps_ball": "eps",
    "step_size": "alpha", "stepsize": "alpha", "eps_iter": "alpha", "eps_step": "alpha",
    "step": "alpha", "lr": "alpha",
    "clip_min": "lower", "clip_max": "upper", "min": "lower", "max": "upper",
    "lower_limit": "lower", "upper_limit": "upper", "low": "lower", "high": "upper",
    "min_value": "lower", "max_value": "upper", "data_min": "lower", "data_max": "upper",
    "ord": "norm", "p": "norm", "constraint": "norm", "distance": "norm",
    "rng": "generator", "seed": "generator",
}
_IMAGE_FORM = ("x_adv", "x_nat", "images", "adv_images", "x_natural")
_DELTA_FORM = ("delta", "perturbation", "eta", "noise")


def unknown_keywords(op: str, unknown: dict, accepted: tuple, delta_form: bool) -> None:
    """A TypeError for keywords ``op`` does not take, with the keyword meant, or the op of
    the other form (an image x_adv, or a perturbation delta)."""
    name = next(iter(unknown))
    target = _KEYWORD_ALIASES.get(name.lower())
    if name == "order" and op == "random_init_":
        hint = ("random_init_ starts the image form (the same start for order='fused' and "
                "'via_delta'); the perturbation form's start is random_delta_(delta, x, ..., "
                "order=...)")
    elif target in accepted:
        hint = f"did you mean {target}=?"
    elif not delta_form and name in _DELTA_FORM:
        hint = (f"{op} steps an image x_adv around x_nat; a perturbation takes "
                f"fastadv.pgd_delta_(delta, grad, x, ...) (random start: random_delta_)")
    elif delta_form and name in _IMAGE_FORM:
        hint = (f"{op} steps a perturbation delta of the inputs x; an image takes "
                f"fastadv.pgd_(x_adv, grad, x_nat, ...) (random start: random_init_)")
    else:
        close = difflib.get_close_matches(name, accepted, n=1)
        hint = f"did you mean {close[0]}=?" if close else f"it takes {', '.join(accepted)}"
    raise TypeError(f"{op}() got an unexpected keyword argument {name!r}: {hint}")


def required(op: str, **values) -> None:
    for name, value in values.items():
        if value is REQUIRED:
            raise TypeError(f"{op}() missing the keyword argument {name}=")


def order(op: str, value, orders: dict) -> int:
    code = orders.get(value) if isinstance(value, str) else None
    if code is None:
        raise ValueError(f"{op}: order must be one of {', '.join(map(repr, orders))}, got "
                         f"{value!r}")
    return code


def separate(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """t and ref do not share memory: a written tensor that is also the centre of the ball
    would move the ball with every step (no projection at all)."""
    if type(t) is not Tensor or type(ref) is not Tensor or torch.compiler.is_compiling():
        return  # a tracer's tensors: no memory to compare
    if t.device == ref.device and torch._C._overlaps(t, ref):
        raise ValueError(f"{op}: {name} shares memory with {ref_name} (the clean inputs the "
                         f"ball is centred on would move with every step); pass a copy, e.g. "
                         f"{name}.clone()")


# data_ptr -> (weak reference to the storage, version, shape, dtype) of tensors a fused op
# wrote last: their next step needs no start check (the op's own output lies in its box). The
# storage reference tells a live tensor from a new one the allocator put at a freed address.
_written: dict = {}


def _written_entry(t: Tensor) -> tuple:
    try:
        version = t._version
    except RuntimeError:  # an inference tensor has no version counter
        version = None
    return version, t.shape, t.dtype


def mark_written(t: Tensor) -> None:
    if type(t) is not Tensor or torch.compiler.is_compiling() or not t.numel():
        return  # a tracer's tensor, or no memory of its own: nothing to remember
    if len(_written) >= _CACHE_SIZE:
        _written.clear()
    _written[t.data_ptr()] = (StorageWeakRef(t.untyped_storage()), _written_entry(t))


def _last_written(t: Tensor) -> bool:
    hit = _written.get(t.data_ptr())
    if hit is None:
        return False
    storage, entry = hit
    return not storage.expired() and entry == _written_entry(t)


def starts_in_box(op: str, written: Tensor, centre: Tensor, eps, lower, upper, *,
                  delta: bool) -> None:
    """Warns (FormWarning) when the tensor a step is about to write lies outside the box the
    step keeps it in: ``[max(lower, x - eps), min(upper, x + eps)]`` for an image,
    ``[max(-eps, lower - x), min(eps, upper - x)]`` for a perturbation. Checked where values
    are readable, and not for a tensor the ops themselves wrote last."""
    if torch.compiler.is_compiling() or type(written) is not Tensor or _last_written(written):
        return  # traced, or the ops' own output (the common case: checked first, cheaply)
    if not values_checkable(written, centre):
        return
    from .errors import FormWarning

    dt = reference.compute_dtype(written)
    e = reference.per_example(_value(eps), written, dt)
    lo = reference.per_channel(_value(lower), written, dt)
    hi = reference.per_channel(_value(upper), written, dt)
    with torch.no_grad():
        w, c = written.detach().to(dt), centre.detach().to(dt)
        if delta:
            low, high = reference.combined_bounds(torch.zeros_like(c), e, lo - c, hi - c)
        else:
            low, high = reference.combined_bounds(c, e, lo, hi)
        slack = torch.finfo(written.dtype).eps * (1 + w.abs())  # the tensor's own rounding
        below, above = (low - w - slack).clamp_min(0), (w - high - slack).clamp_min(0)
        outside = (below > 0) | (above > 0)
        count = int(outside.sum())
    mark_written(written)  # warn once per state, not at every retry
    if not count:
        return
    by = float(torch.maximum(below.max(), above.max()))
    if delta:
        what = ("delta lies outside [max(-eps, lower - x), min(eps, upper - x)]",
                "If it holds an image x_adv, call fastadv.pgd_(x_adv, grad, x_nat, ...)")
    else:
        what = ("x_adv lies outside [max(lower, x_nat - eps), min(upper, x_nat + eps)]",
                "If it holds a perturbation, call fastadv.pgd_delta_(delta, grad, x, ...); if "
                "the inputs are normalised, pass lower/upper per channel")
    warnings.warn(f"{op}: {what[0]} at {count} of {written.numel()} elements (by up to "
                  f"{by:.3g}); the step projects it there, which is not a step from where it "
                  f"was. {what[1]}; a random start belongs inside the box.", FormWarning,
                  stacklevel=_caller_level())


def _caller_level() -> int:
    """The stacklevel of warnings.warn, called here, that names the first caller outside
    fastadv (the line of the user's code that called the op)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
