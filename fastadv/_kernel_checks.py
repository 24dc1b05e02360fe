"""The argument checks of the kernel launchers, for the Triton ones: ``csrc/checks.h`` in
Python, rule for rule, in the same order, with the same messages and exception types.

The C++ kernel ops (``torch.ops.fastadv._*_kernel_``) check their own arguments; the Triton
launchers (``fastadv.kernels``), which take the same arguments, are called from the op layer
(``fastadv/ops.py``) through these checks, so that a registered op called directly with
tensors or integers the public functions would refuse raises instead of reading out of
bounds on either backend. ``tests/ops/test_raw_op_fuzz.py`` compares the two on random calls.

The integer rules (``walk`` and ``period``), checked before any arithmetic on the integers:

- ``example_size >= 1`` and ``channel_div >= 1``, always;
- for a non-empty ``x``: ``example_size`` divides ``x.numel()``;
- ``channel_div * channels`` divides ``example_size``, where ``channels`` is the length of
  the per-channel bound tables (they must agree, and hold at least one value), 1 without.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# How c10 prints a ScalarType, which the C++ messages show.
_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.float64: "Double", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype))


def _non_overlapping_and_dense(t: Tensor) -> bool:
    """c10's is_non_overlapping_and_dense: some permutation of t's dims is contiguous."""
    if t.is_contiguous():
        return True
    sizes, strides = t.shape, t.stride()
    if len(sizes) == 1:
        return sizes[0] < 2 or strides[0] == 1
    required = 1
    for stride, size in sorted((st, sz) for sz, st in zip(sizes, strides) if sz >= 2):
        if stride != required:
            return False
        required *= size
    return True


def _same_device(op: str, name: str, t: Tensor, ref: str, x: Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref} is on {x.device} (all "
                         f"tensors must be on {ref}'s device)")


def _kernel_dtype(op: str, name: str, t: Tensor) -> None:
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got "
                        f"{_dtype_name(t.dtype)}")


def _written(op: str, name: str, x: Tensor) -> None:
    _kernel_dtype(op, name, x)
    if not _non_overlapping_and_dense(x):
        raise ValueError(f"{op}: {name} must be dense and non-overlapping (the op layer copies "
                         "other layouts)")


def _read_like(op: str, name: str, t: Tensor, ref: str, x: Tensor, same_dtype: bool) -> None:
    _same_device(op, name, t, ref, x)
    if same_dtype:
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have {ref}'s dtype ({_dtype_name(x.dtype)}), "
                            f"got {_dtype_name(t.dtype)}")
    else:
        _kernel_dtype(op, name, t)
    if t.shape != x.shape:
        raise ValueError(f"{op}: {name} has shape {list(t.shape)} but {ref} has shape "
                         f"{list(x.shape)}")
    if t.stride() != x.stride():  # strides of size-1 dimensions do not matter
        for size, a, b in zip(x.shape, t.stride(), x.stride()):
            if size != 1 and a != b:
                raise ValueError(f"{op}: {name} has strides {list(t.stride())} but {ref} has "
                                 f"strides {list(x.stride())} (the kernel walks both in "
                                 f"{ref}'s memory order)")


def _integer(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    return value


def walk(op: str, x: Tensor, example_size: int, channel_div: int) -> int:
    """The flat walk's integers (checks.h ``walk``): the number of examples, or -1 for an
    empty x (nothing is read: no sizes to check)."""
    example_size = _integer(op, "example_size", example_size)
    channel_div = _integer(op, "channel_div", channel_div)
    if example_size < 1:
        raise ValueError(f"{op}: example_size must be >= 1, got {example_size}")
    if channel_div < 1:
        raise ValueError(f"{op}: channel_div must be >= 1, got {channel_div}")
    numel = x.numel()
    if numel == 0:
        return -1
    if numel % example_size:
        raise ValueError(f"{op}: example_size must divide x's {numel} elements, got "
                         f"{example_size}")
    return numel // example_size


def period(op: str, example_size: int, channel_div: int, channels: int,
           table: Optional[str]) -> None:
    """channel_div * channels divides example_size (checks.h ``period``)."""
    fits = (channel_div <= example_size // channels
            and example_size % (channel_div * channels) == 0)
    if fits:
        return
    if table is None:
        raise ValueError(f"{op}: channel_div ({channel_div}) must divide example_size "
                         f"({example_size})")
    raise ValueError(f"{op}: channel_div ({channel_div}) * channels ({channels}, the length of "
                     f"{table}) must divide example_size ({example_size})")


def _table(op: str, name: str, t: Optional[Tensor], x: Tensor, length: int) -> None:
    if t is None:
        return
    _same_device(op, name, t, "x", x)
    if t.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32, got {_dtype_name(t.dtype)}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous")
    if length >= 0 and t.numel() != length:
        raise ValueError(f"{op}: {name} must have one value per example ({length}), got "
                         f"{t.numel()}")


def _bounds(op: str, x: Tensor, lower: Optional[Tensor], upper: Optional[Tensor],
            examples: int, example_size: int, channel_div: int) -> int:
    _table(op, "lower", lower, x, -1)
    _table(op, "upper", upper, x, -1)
    if examples < 0:
        return 1
    for name, t in (("lower", lower), ("upper", upper)):
        if t is not None and t.numel() < 1:
            raise ValueError(f"{op}: {name} must hold one value per channel, got none")
    if lower is not None and upper is not None and lower.numel() != upper.numel():
        raise ValueError(f"{op}: lower has {lower.numel()} channels but upper has "
                         f"{upper.numel()}")
    name = "lower" if lower is not None else "upper" if upper is not None else None
    channels = lower.numel() if lower is not None else upper.numel() if upper is not None else 1
    period(op, example_size, channel_div, channels, name)
    return channels


# params.h Kind and Order.
SCALAR, EXAMPLE, CHANNEL, EXAMPLE_CHANNEL, ELEMENT = range(5)
CLAMP, IMAGE_VIA_DELTA, DELTA, DELTA_VIA_IMAGE = range(4)


def legacy_kinds(*tables: Optional[Tensor], channel_from: int) -> list:
    """The kinds an empty ``kinds`` stands for (checks.h ``legacy_kinds``): per example before
    index ``channel_from``, per channel from it on."""
    return [SCALAR if t is None else EXAMPLE if k < channel_from else CHANNEL
            for k, t in enumerate(tables)]


def kinded(op: str, x: Tensor, names: tuple, tables: tuple, kinds, order, examples: int,
           example_size: int, channel_div: int) -> int:
    """checks.h ``kinded``: the channel count of the walk."""
    order = _integer(op, "order", order)
    if not 0 <= order < 4:
        raise ValueError(f"{op}: order must be 0, 1, 2 or 3, got {order}")
    if len(kinds) != len(names):
        raise ValueError(f"{op}: kinds must hold {len(names)} values (one per parameter) or "
                         f"none, got {len(kinds)}")
    channels, channel_table = -1, None
    for name, t, kind in zip(names, tables, kinds):
        kind = _integer(op, f"the kind of {name}", kind)
        if not 0 <= kind < 5:
            raise ValueError(f"{op}: the kind of {name} must be 0 to 4, got {kind}")
        if (kind == SCALAR) != (t is None):
            raise ValueError(f"{op}: {name} " + ("is a tensor but its kind is 0 (a scalar)"
                                                  if t is not None else
                                                  "has a tensor kind but no tensor"))
        if t is None:
            continue
        if kind == ELEMENT:
            _read_like(op, name, t, "x", x, same_dtype=False)
            if t.dtype != torch.float32:
                raise TypeError(f"{op}: {name} must be float32, got {_dtype_name(t.dtype)}")
            continue
        _table(op, name, t, x, -1)
        if examples < 0:
            continue
        n = t.numel()
        if kind == EXAMPLE:
            if n != examples:
                raise ValueError(f"{op}: {name} must have one value per example ({examples}), "
                                 f"got {n}")
            continue
        count = n
        if kind == EXAMPLE_CHANNEL:
            if n < examples or n % examples:
                raise ValueError(f"{op}: {name} must have one value per example and channel "
                                 f"({examples} examples), got {n}")
            count = n // examples
        if count < 1:
            raise ValueError(f"{op}: {name} must hold one value per channel, got none")
        if channels >= 0 and count != channels:
            raise ValueError(f"{op}: {name} has {count} channels but {channel_table} has "
                             f"{channels}")
        channels, channel_table = count, name
    if examples < 0:
        return 1
    period(op, example_size, channel_div, max(channels, 1), channel_table)
    return max(channels, 1)


def step_args(op: str, x: Tensor, grad: Tensor, x_nat: Tensor, eps: Optional[Tensor],
              alpha: Optional[Tensor], lower: Optional[Tensor], upper: Optional[Tensor],
              example_size: int, channel_div: int, kinds=(), order=0) -> int:
    """``_linf_step_kernel_`` and ``_l2_step_kernel_`` (checks.h ``step_args``): the channel
    count of the walk."""
    _written(op, "x", x)
    _read_like(op, "grad", grad, "x", x, same_dtype=False)
    _read_like(op, "x_nat", x_nat, "x", x, same_dtype=True)
    examples = walk(op, x, example_size, channel_div)
    if len(kinds) or order != 0:
        tables = (eps, alpha, lower, upper)
        return kinded(op, x, ("eps", "alpha", "lower", "upper"), tables,
                      kinds if len(kinds) else legacy_kinds(*tables, channel_from=2), order,
                      examples, example_size, channel_div)
    _table(op, "eps", eps, x, examples)
    _table(op, "alpha", alpha, x, examples)
    return _bounds(op, x, lower, upper, examples, example_size, channel_div)


def random_init_args(op: str, x: Tensor, x_nat: Tensor, seed: Tensor, eps: Optional[Tensor],
                     lower: Optional[Tensor], upper: Optional[Tensor], example_size: int,
                     channel_div: int, kinds=(), order=0) -> int:
    """``_random_init_kernel_`` (checks.h ``random_init_args``): the channel count."""
    _written(op, "x", x)
    _read_like(op, "x_nat", x_nat, "x", x, same_dtype=True)
    _same_device(op, "seed", seed, "x", x)
    if seed.dtype != torch.int64:
        raise TypeError(f"{op}: seed must be int64, got {_dtype_name(seed.dtype)}")
    if seed.numel() < 1:
        raise ValueError(f"{op}: seed must hold one value, got an empty tensor")
    examples = walk(op, x, example_size, channel_div)
    if len(kinds) or order != 0:
        tables = (eps, lower, upper)
        return kinded(op, x, ("eps", "lower", "upper"), tables,
                      kinds if len(kinds) else legacy_kinds(*tables, channel_from=1), order,
                      examples, example_size, channel_div)
    _table(op, "eps", eps, x, examples)
    return _bounds(op, x, lower, upper, examples, example_size, channel_div)


def keep_best_args(op: str, best_x: Tensor, best_loss: Tensor, x: Tensor, loss: Tensor,
                   example_size: int) -> None:
    """``_keep_best_kernel_`` (checks.h ``keep_best_args``)."""
    _written(op, "best_x", best_x)
    _read_like(op, "x", x, "best_x", best_x, same_dtype=True)
    examples = walk(op, best_x, example_size, 1)
    for name, t in (("best_loss", best_loss), ("loss", loss)):
        _same_device(op, name, t, "best_x", best_x)
        _kernel_dtype(op, name, t)
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")
        if examples >= 0 and t.numel() != examples:
            raise ValueError(f"{op}: {name} must have one value per example ({examples}), "
                             f"got {t.numel()}")
    if loss.dtype != best_loss.dtype:
        raise TypeError(f"{op}: loss must have best_loss's dtype ({_dtype_name(best_loss.dtype)}"
                        f"), got {_dtype_name(loss.dtype)}")
    if loss.numel() != best_loss.numel():
        raise ValueError(f"{op}: loss has {loss.numel()} values but best_loss has "
                         f"{best_loss.numel()}")


def launcher_args(name: str, x: Tensor, args: tuple) -> None:
    """The checks of kernel ``name`` (linf_step, l2_step, random_init, keep_best) for a
    launcher called as ``launch(x, *args)`` with the C++ kernel op's arguments."""
    op = f"fastadv::_{name}_kernel_"
    if name in ("linf_step", "l2_step"):
        grad, x_nat, eps, _, alpha, _, lower, _, upper, _, example_size, channel_div = args[:12]
        step_args(op, x, grad, x_nat, eps, alpha, lower, upper, example_size, channel_div,
                  *args[12:])
    elif name == "random_init":
        x_nat, seed, eps, _, lower, _, upper, _, example_size, channel_div = args[:10]
        random_init_args(op, x, x_nat, seed, eps, lower, upper, example_size, channel_div,
                         *args[10:])
    elif name == "keep_best":
        best_loss, other, loss, example_size = args
        keep_best_args(op, x, best_loss, other, loss, example_size)
    else:
        raise ValueError(f"no argument checks for kernel {name!r}")
