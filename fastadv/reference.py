"""Reference PyTorch implementations of fastadv's ops: the specification every kernel is
tested against, and the backend of last resort (``FASTADV_BACKEND=torch``).

They take the op layer's normalised arguments: ``eps``/``alpha`` a float, an fp32 tensor
``[B]`` (per example) or one with x's number of dims that broadcasts against it;
``lower``/``upper`` a float, an fp32 tensor ``[C]`` (per channel, dim 1) or one with x's
number of dims that broadcasts against it. They return new tensors in the compute dtype
(fp32; fp64 for fp64 inputs) and never write their inputs.

``order`` is the rounding order of the l-inf update (the kernels' ``Order``, csrc/params.h):
0 and 1 write an image, 2 and 3 a perturbation; see :func:`linf_step`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._layout import memory_order_index

Scalar = float | Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def per_example(value: Scalar, x: Tensor, dtype: torch.dtype) -> Scalar:
    """eps or alpha as something that broadcasts against x: a ``[B]`` table per example."""
    if isinstance(value, Tensor):
        if value.dim() == x.dim():
            return value.to(dtype)
        return value.to(dtype).view(-1, *([1] * (x.dim() - 1)))
    return value


def per_channel(value: Scalar, x: Tensor, dtype: torch.dtype) -> Scalar:
    """lower or upper as something that broadcasts against x: a ``[C]`` table per channel."""
    if isinstance(value, Tensor):
        if value.dim() == x.dim():  # broadcasts as it is (a 1-D x: [1] or [B])
            return value.to(dtype)
        if value.numel() == 1:
            return value.to(dtype).reshape(())
        return value.to(dtype).view(1, -1, *([1] * (x.dim() - 2)))
    return value


def sign_or_zero(g: Tensor, dtype: torch.dtype) -> Tensor:
    """sign(g) with sign(0) = sign(NaN) = 0."""
    return (g > 0).to(dtype) - (g < 0).to(dtype)


def _maximum(a: Tensor, b: Scalar) -> Tensor:
    return torch.maximum(a, b) if isinstance(b, Tensor) else torch.clamp_min(a, b)


def _minimum(a: Tensor, b: Scalar) -> Tensor:
    return torch.minimum(a, b) if isinstance(b, Tensor) else torch.clamp_max(a, b)


def combined_bounds(x_nat: Tensor, eps: Scalar, lower: Scalar, upper: Scalar):
    """``max(lower, x_nat - eps)`` and ``min(upper, x_nat + eps)``: ball and range in one pair."""
    return _maximum(x_nat - eps, lower), _minimum(x_nat + eps, upper)


def clamp(v: Tensor, lo: Scalar, hi: Scalar) -> Tensor:
    return _minimum(_maximum(v, lo), hi)


def linf_step(x_adv, grad, x_nat, eps, alpha, lower, upper, order: int = 0) -> Tensor:
    """The l-inf step with ``v = x_adv + alpha*sign(grad)``, in rounding order ``order``:

    - 0: ``clamp(v, max(lower, x_nat - eps), min(upper, x_nat + eps))`` (x_adv an image);
    - 1: ``clamp(x_nat + clamp(v - x_nat, -eps, eps), lower, upper)`` (an image);
    - 2: ``clamp(clamp(v, -eps, eps), lower - x_nat, upper - x_nat)`` (x_adv a perturbation);
    - 3: ``clamp(x_nat + clamp(v, -eps, eps), lower, upper) - x_nat`` (a perturbation).
    """
    dt = compute_dtype(x_adv)
    eps, alpha = per_example(eps, x_adv, dt), per_example(alpha, x_adv, dt)
    lower, upper = per_channel(lower, x_adv, dt), per_channel(upper, x_adv, dt)
    x_nat = x_nat.to(dt)
    v = x_adv.to(dt) + alpha * sign_or_zero(grad, dt)
    if order == 0:
        return clamp(v, *combined_bounds(x_nat, eps, lower, upper))
    if order == 1:
        return clamp(x_nat + clamp(v - x_nat, -eps, eps), lower, upper)
    if order == 2:
        return clamp(clamp(v, -eps, eps), lower - x_nat, upper - x_nat)
    if order == 3:
        return clamp(x_nat + clamp(v, -eps, eps), lower, upper) - x_nat
    raise ValueError(f"order must be 0, 1, 2 or 3, got {order!r}")


def _example_norm(t: Tensor) -> Tensor:
    """The l2 norm of each example, shaped to broadcast against t."""
    if t.dim() == 1:
        return t.abs()
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


def l2_step(x_adv, grad, x_nat, eps, alpha, lower, upper) -> Tensor:
    """Per example: ``v = x_adv + alpha*g/||g||`` (no step where g = 0; NaN entries of g
    count as 0), projected onto ``||v - x_nat||_2 <= eps``, then clipped to [lower, upper].
    An example with a NaN in x_nat or eps comes out all NaN."""
    dt = compute_dtype(x_adv)
    eps, alpha = per_example(eps, x_adv, dt), per_example(alpha, x_adv, dt)
    lower, upper = per_channel(lower, x_adv, dt), per_channel(upper, x_adv, dt)
    x_nat = x_nat.to(dt)
    g = grad.to(dt)
    g = torch.where(torch.isnan(g), torch.zeros_like(g), g)
    grad_norm = _example_norm(g)
    safe_norm = torch.where(grad_norm > 0, grad_norm, torch.ones_like(grad_norm))
    factor = torch.where(grad_norm > 0, alpha / safe_norm, torch.zeros_like(grad_norm))
    v = x_adv.to(dt) + g * factor
    delta = v - x_nat
    delta_norm = _example_norm(delta)
    # Written so that a NaN distance or eps (a NaN in x_nat or eps) projects, to NaN: a
    # corrupted example comes out all NaN instead of as an unprojected step.
    safe_delta_norm = torch.where(delta_norm == 0, torch.ones_like(delta_norm), delta_norm)
    inside = delta_norm <= eps
    # eps read as 0 where the projection is not taken: with eps = inf (no projection) the
    # unused eps/||delta|| would be inf, and its zero gradient times inf NaN in pgd_step's
    # backward. The same roundings as eps/||delta|| (a float eps divides as reciprocal * eps).
    if isinstance(eps, Tensor):
        shrink = torch.where(inside, torch.zeros_like(eps), eps) / safe_delta_norm
    else:
        used = torch.where(inside, torch.zeros_like(delta_norm), torch.full_like(delta_norm, eps))
        shrink = safe_delta_norm.reciprocal() * used
    projected = torch.where(inside, v, x_nat + delta * shrink)
    return clamp(projected, lower, upper)


# Philox4x32-10 constants (Salmon et al. 2011), as in Triton's tl.randint.
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32 bits of a*b for a 32-bit constant a and uint32 values b held in
    int64, split into 16-bit halves so no product overflows int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo  # each < 2**48
    t = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (t >> 32), t & _MASK32


def philox_first_word(seed: Tensor, counter: Tensor) -> Tensor:
    """Philox4x32-10 with key (seed_lo, seed_hi) and counter (counter_lo, counter_hi, 0, 0);
    returns the first output word as uint32 values in int64."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = c3 = torch.zeros_like(counter)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0


def uniform_minus_one_one(bits: Tensor) -> Tensor:
    """The top 24 of 32 random bits as fp32 in [-1, 1); exact."""
    return (bits >> 8).to(torch.float32) * 2.0**-24 * 2.0 - 1.0


def random_init(x_adv, x_nat, seed, eps, lower, upper, order: int = 0) -> Tensor:
    """The random start of the step of the same ``order``, from ``n = eps*U(-1, 1)`` with
    U drawn from Philox keyed by ``seed`` (int64 ``[1]``) at each element's position in the
    kernels' walk order, so every backend draws the same numbers:

    - 0 and 1: ``clamp(x_nat + n, max(lower, x_nat - eps), min(upper, x_nat + eps))``;
    - 2: ``clamp(n, lower - x_nat, upper - x_nat)`` (a perturbation);
    - 3: ``clamp(x_nat + n, lower, upper) - x_nat`` (a perturbation).
    """
    dt = compute_dtype(x_adv)
    eps = per_example(eps, x_adv, dt)
    lower, upper = per_channel(lower, x_adv, dt), per_channel(upper, x_adv, dt)
    x_nat = x_nat.to(dt)
    counter = memory_order_index(x_adv)
    noise = uniform_minus_one_one(philox_first_word(seed.to(x_adv.device).view(()), counter))
    n = eps * noise.to(dt)
    if order in (0, 1):
        return clamp(x_nat + n, *combined_bounds(x_nat, eps, lower, upper))
    if order == 2:
        return clamp(n, lower - x_nat, upper - x_nat)
    if order == 3:
        return clamp(x_nat + n, lower, upper) - x_nat
    raise ValueError(f"order must be 0, 1, 2 or 3, got {order!r}")


def keep_best(best_x, best_loss, x, loss) -> tuple[Tensor, Tensor]:
    """Per example, where ``loss > best_loss`` (strictly; a NaN loss never wins), take ``x``
    and ``loss``; elsewhere keep ``best_x`` and ``best_loss``."""
    improved = loss.float() > best_loss.float()
    mask = improved.view(-1, *([1] * (best_x.dim() - 1)))
    return torch.where(mask, x, best_x), torch.where(improved, loss.to(best_loss.dtype), best_loss)
