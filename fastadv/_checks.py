"""Argument checking for the public ops: every check runs before any write, and every error
names the argument. Value checks on tensors (e.g. eps >= 0 per example) read the tensor, so
they are skipped while torch.compile traces or a CUDA graph captures; the attack loops check
once up front instead. A tensor parameter checked once is not read again while it is the same
tensor, unmodified (``_checked``): a user loop passing the same eps tensor every step syncs
with the host on the first step only."""

from __future__ import annotations

import math
import numbers
import weakref

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def values_checkable(*tensors: Tensor) -> bool:
    """False while tracing or capturing, where reading a tensor's values is not possible
    (also for a tracer's tensors, e.g. under make_fx: fake or functional ones)."""
    if torch.compiler.is_compiling():
        return False
    if any(type(t) is not Tensor and _is_tracer_tensor(t) for t in tensors):
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


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


def step_tensors(x_adv, grad, x_nat) -> None:
    """The checks of ``batched("x_adv")``, ``like("grad", same_dtype=False)`` and
    ``like("x_nat", same_dtype=True)``, combined into one expression because every step makes
    them; anything unusual takes the separate checks, which name what is wrong."""
    if (isinstance(x_adv, Tensor) and isinstance(grad, Tensor) and isinstance(x_nat, Tensor)
            and x_adv.dtype in SUPPORTED_DTYPES and grad.dtype in SUPPORTED_DTYPES
            and x_nat.dtype is x_adv.dtype and x_adv.dim() > 0
            and grad.shape == x_adv.shape and x_nat.shape == x_adv.shape
            and grad.device == x_adv.device and x_nat.device == x_adv.device):
        return
    batched("x_adv", x_adv)
    like("grad", grad, "x_adv", x_adv, same_dtype=False)
    like("x_nat", x_nat, "x_adv", x_adv, same_dtype=True)


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


def per_example(name: str, value, x: Tensor, *, nonnegative: bool, finite: bool):
    """A float, or a tensor of shape [] or [B]. Returns (fp32 tensor [B] on x's device or
    None, float)."""
    if not isinstance(value, Tensor):
        number = _number(name, value)
        _check_number(name, number, nonnegative=nonnegative, finite=finite)
        return None, number
    key = ("per_example", name, nonnegative, finite, id(value))
    hit = None if torch.compiler.is_compiling() else _cached(key, (value,), _context(x))
    if hit is not None:
        return hit
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    batch = x.shape[0]
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
        raise ValueError(
            f"{name} must be a float or a tensor of shape [B] = [{batch}] (one per example), "
            f"got shape {list(value.shape)}"
        )
    if values_checkable(value):
        _check_values(name, value.detach(), nonnegative=nonnegative, finite=finite)
    per = value.detach().to(device=x.device, dtype=torch.float32).expand(batch).contiguous()
    _remember(key, (value,), _context(x), (per, 0.0))
    return per, 0.0


def per_channel(name: str, value, x: Tensor):
    """A float, or a tensor that broadcasts against x along the channel dim (1) only, e.g.
    shape [C, 1, 1] for [B, C, H, W] inputs. Returns (fp32 tensor [C] on x's device, [1]
    when x has no channel dim, or None; float). A one-element tensor is expanded to [C], so
    a per-channel bound and a tensor one always have the same length for the kernels."""
    if not isinstance(value, Tensor):
        number = _number(name, value)
        if math.isnan(number):
            raise ValueError(f"{name} must not be NaN")
        return None, number
    key = ("per_channel", name, id(value))
    hit = None if torch.compiler.is_compiling() else _cached(key, (value,), _context(x))
    if hit is not None:
        return hit
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    shape = [1] * (x.dim() - value.dim()) + list(value.shape)
    channel_only = value.dim() <= x.dim() and all(
        size == 1 or (d == 1 and size == x.shape[1]) for d, size in enumerate(shape)
    )
    if not channel_only:
        hint = [x.shape[1]] + [1] * (x.dim() - 2) if x.dim() >= 2 else []
        raise ValueError(
            f"{name} must be a float or a tensor broadcasting along the channel dim of "
            f"x_adv {list(x.shape)} only (e.g. shape {hint}), got shape {list(value.shape)}"
        )
    if values_checkable(value) and torch.isnan(value).any():
        raise ValueError(f"{name} must not be NaN")
    flat = value.detach().to(device=x.device, dtype=torch.float32).reshape(-1)
    if flat.numel() == 1 and x.dim() >= 2:
        flat = flat.expand(x.shape[1])
    result = (flat.contiguous(), 0.0)
    _remember(key, (value,), _context(x), result)
    return result


def ordered_bounds(lower, upper) -> None:
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
        lo_v = lo_t if lo_t is not None else torch.tensor(lo)
        hi_v = hi_t if hi_t is not None else torch.tensor(hi)
        if (lo_v.to(hi_v.device) > hi_v).any():
            raise ValueError("lower must be <= upper in every channel")
        _remember(key, tensors, None, True)


def norm(value) -> str:
    if value not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {value!r}")
    return value
