"""What every PGD loop in fastadv shares, eager or graphed: the attack's settings, the model
in attack mode, one chunk of K fused steps, and the input checks made once per attack."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import _checks, reference
from ..ops import ball_args, random_init_
from .losses import LOSSES, objective

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
@dataclass(frozen=True)
class AttackConfig:
    """One attack's settings, checked (:func:`check_inputs`)."""

    eps: float | Tensor  # float, or fp32 [B] on x's device
    alpha: float | Tensor
    steps: int
    norm: str
    random_start: bool
    loss: str
    targeted: bool
    lower: float | Tensor
    upper: float | Tensor
    precision: str
    generator: torch.Generator | None


# --------------------------------------------------------------------------- model handling


@contextlib.contextmanager
def attack_mode(model: nn.Module, *, eval_mode: bool = True, input_grad_only: bool = True):
    """While attacking: every submodule in eval mode (if eval_mode) and every parameter with
    requires_grad=False (if input_grad_only), so backward computes no weight gradients and
    leaves ``.grad`` alone; both restored afterwards, module by module."""
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in model.parameters() if p.requires_grad] if input_grad_only else []
    try:
        for p in frozen:
            p.requires_grad_(False)
        if eval_mode:
            model.eval()
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for m, training in modes:
            m.training = training


def model_is_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def precision_autocast(device_type: str, precision: str):
    """The autocast context of ``precision`` ("fp32": none, "bf16": bfloat16)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def model_logits(model, x: Tensor, precision: str) -> Tensor:
    with precision_autocast(x.device.type, precision):
        logits = model(x)
    return logits.float()


def is_fooled(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


# --------------------------------------------------------------------------- one chunk


def l2_random_init_(x_adv: Tensor, x_nat: Tensor, eps, lower, upper, generator) -> Tensor:
    """A uniform direction at radius eps·U(0, 1), clipped (torchattacks' l2 random start)."""
    source = generator.device if generator is not None else x_nat.device
    noise = torch.randn(x_nat.shape, generator=generator, device=source).to(x_nat.device)
    radius = torch.rand(len(x_nat), generator=generator, device=source).to(x_nat.device)
    norms = noise.reshape(len(noise), -1).norm(dim=1).clamp_min(1e-12)
    scale = (radius / norms).view(-1, *[1] * (x_nat.dim() - 1))
    delta = noise * scale * reference.per_example(eps, x_nat, torch.float32)
    lo = reference.per_channel(lower, x_nat, torch.float32)
    hi = reference.per_channel(upper, x_nat, torch.float32)
    return x_adv.copy_(reference.clamp(x_nat + delta, lo, hi))


def attack_chunk(model, x_nat: Tensor, y: Tensor, cfg: AttackConfig, evaluate: bool = True):
    """K PGD steps on one batch (no restarts): returns (x_adv, objective [n], fooled [n]), the
    last two from one more forward pass, or None without `evaluate` (nothing to compare
    against with a single restart). Free of host synchronisation, so it can be captured in a
    CUDA graph."""
    x_adv = torch.empty_like(x_nat)
    if not cfg.random_start:
        x_adv.copy_(x_nat)
    elif cfg.norm == "linf":
        random_init_(x_adv, x_nat, eps=cfg.eps, lower=cfg.lower, upper=cfg.upper,
                     generator=cfg.generator)
    else:
        l2_random_init_(x_adv, x_nat, cfg.eps, cfg.lower, cfg.upper, cfg.generator)
    ball = ball_args(x_adv, cfg.eps, cfg.alpha, cfg.lower, cfg.upper, cfg.norm)
    loss_fn = objective(cfg.loss)
    for step in range(cfg.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model_logits(model, x_adv, cfg.precision)
            if step == 0:
                check_logits(logits, y)
            loss = loss_fn(logits, y, cfg.targeted)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = x_adv.detach()
        with torch.no_grad():
            torch.ops.fastadv.pgd_(x_adv, grad, x_nat, *ball)
    if not evaluate and cfg.steps > 0:
        return x_adv, None, None
    with torch.no_grad():
        logits = model_logits(model, x_adv, cfg.precision)
        if cfg.steps == 0:
            check_logits(logits, y)
        return x_adv, loss_fn(logits, y, cfg.targeted), is_fooled(logits, y, cfg.targeted)


def check_inputs(model, x, y, eps, alpha, steps, restarts, norm, loss, targeted, lower, upper,
                  precision, max_batch):
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    x = _checks.batched("x", x)
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16,
                                                     torch.uint8):
        raise TypeError(f"y must be an integer tensor of class indices [B], got "
                        f"{type(y).__name__ if not isinstance(y, Tensor) else y.dtype}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape [B] = [{len(x)}], got {list(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "dlr" and targeted:
        raise ValueError("loss='dlr' is untargeted; use loss='ce' or 'cw' with targeted=True")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ValueError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
    # eps/alpha/lower/upper/norm: the op layer's checks, once for the whole attack.
    e_t, e, a_t, a, lo_t, lo, hi_t, hi, norm = ball_args(x, eps, alpha, lower, upper, norm)
    pick = lambda t, v: t if t is not None else v  # noqa: E731
    return (x, y.long(), pick(e_t, e), pick(a_t, a), pick(_channel_shaped(lo_t, x), lo),
            pick(_channel_shaped(hi_t, x), hi), norm)


def _channel_shaped(bound, x: Tensor):
    """A flat [C] bound as [C, 1, ...]: the ops, called again every step, check it against x
    (a flat [C] would otherwise read as x's last dimension)."""
    if bound is None or x.dim() < 3 or bound.dim() != 1:
        return bound
    return bound.view(-1, *[1] * (x.dim() - 2))


def check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != len(y):
        raise ValueError(f"model must return logits of shape [B, num_classes] = [{len(y)}, C], "
                         f"got {list(logits.shape)}")
    if _checks.values_checkable() and len(y) and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"labels y must lie in [0, {logits.shape[1]}) (the model's classes), "
                         f"got values in [{y.min().item()}, {y.max().item()}]")
