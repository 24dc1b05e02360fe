"""PGD (Madry et al.) on the fused ops: the inner maximisation, made fast.

Per batch: restarts run as one batch of R×B (chunked under ``max_batch``), gradients are
taken with respect to the input only (parameters frozen, so no weight-gradient kernels, also
under ``torch.compile``), the model can run under bf16 autocast with ``x_adv`` kept in fp32,
and on CUDA the whole K-step attack can be replayed from a CUDA graph.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import _checks, reference
from ..ops import ball_args, keep_best_, random_init_
from .losses import LOSSES, objective

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# Fewest rows per forward pass on a CPU when batching restarts (see pgd's max_batch).
CPU_MIN_BATCH = 64


@dataclass
class AttackInfo:
    """Per example, for the candidate kept: the attack objective (higher is stronger),
    whether it fools the model, and which restart it came from."""

    loss: Tensor  # [B] float32
    fooled: Tensor  # [B] bool
    restart: Tensor  # [B] int64


@dataclass(frozen=True)
class _Config:
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


def _logits(model, x: Tensor, precision: str) -> Tensor:
    with precision_autocast(x.device.type, precision):
        logits = model(x)
    return logits.float()


def _fooled(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


# --------------------------------------------------------------------------- one chunk


def _l2_random_init_(x_adv: Tensor, x_nat: Tensor, eps, lower, upper, generator) -> Tensor:
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


def attack_chunk(model, x_nat: Tensor, y: Tensor, cfg: _Config, evaluate: bool = True):
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
        _l2_random_init_(x_adv, x_nat, cfg.eps, cfg.lower, cfg.upper, cfg.generator)
    ball = ball_args(x_adv, cfg.eps, cfg.alpha, cfg.lower, cfg.upper, cfg.norm)
    loss_fn = objective(cfg.loss)
    for step in range(cfg.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = _logits(model, x_adv, cfg.precision)
            if step == 0:
                _check_logits(logits, y)
            loss = loss_fn(logits, y, cfg.targeted)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = x_adv.detach()
        with torch.no_grad():
            torch.ops.fastadv.pgd_(x_adv, grad, x_nat, *ball)
    if not evaluate and cfg.steps > 0:
        return x_adv, None, None
    with torch.no_grad():
        logits = _logits(model, x_adv, cfg.precision)
        if cfg.steps == 0:
            _check_logits(logits, y)
        return x_adv, loss_fn(logits, y, cfg.targeted), _fooled(logits, y, cfg.targeted)


# --------------------------------------------------------------------------- restarts


class _Best:
    """The per-example reduction over restarts: a candidate that fools the model scores +inf
    (so the first fooling restart wins), otherwise its objective; strictly higher wins."""

    def __init__(self, x: Tensor):
        batch = len(x)
        self.x = x.clone()
        self.score = torch.full((batch,), -math.inf, device=x.device)
        self.loss = torch.full((batch,), math.nan, device=x.device)
        self.fooled = torch.zeros(batch, dtype=torch.bool, device=x.device)
        self.restart = torch.full((batch,), -1, dtype=torch.int64, device=x.device)

    def update(self, idx, x_c: Tensor, loss_c: Tensor | None, fooled_c: Tensor | None,
               restart: int):
        if loss_c is None:  # the only candidate: it wins
            self.x[idx] = x_c
            return
        score = torch.where(fooled_c, math.inf, loss_c)
        best_x, best_score = self.x[idx], self.score[idx]  # views for slices, copies otherwise
        won = score > best_score
        keep_best_(best_x, best_score, x_c, score)
        if not isinstance(idx, slice):
            self.x[idx], self.score[idx] = best_x, best_score
        self.loss[idx] = torch.where(won, loss_c, self.loss[idx])
        self.fooled[idx] = torch.where(won, fooled_c, self.fooled[idx])
        self.restart[idx] = torch.where(won, restart, self.restart[idx])


def _repeat(t, times: int):
    """t stacked `times` times along the batch, keeping channels_last."""
    if not isinstance(t, Tensor) or times == 1:
        return t
    out = t.repeat(times, *[1] * (t.dim() - 1))
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _take(t, idx):
    return t[idx] if isinstance(t, Tensor) and t.dim() > 0 else t


def _run_restarts(model, x, y, cfg: _Config, restarts: int, early_stop: bool,
                  max_batch: int | None, chunk_fn, evaluate: bool) -> _Best:
    best = _Best(x)
    batch = len(x)
    if early_stop:
        active = torch.arange(batch, device=x.device)
        for r0 in range(restarts):
            if active.numel() == 0:
                break
            _attack_group(best, active, x, y, cfg, r0, 1, max_batch, chunk_fn, True)
            active = active[~best.fooled[active]]
        return best
    step = batch if max_batch is None else max(1, min(batch, max_batch))
    for start in range(0, batch, step):
        idx = slice(start, min(batch, start + step))
        n = idx.stop - idx.start
        per_chunk = restarts if max_batch is None else max(1, max_batch // n)
        for r0 in range(0, restarts, per_chunk):
            _attack_group(best, idx, x, y, cfg, r0, min(per_chunk, restarts - r0), None, chunk_fn,
                          evaluate)
    return best


def _attack_group(best: _Best, idx, x, y, cfg: _Config, first_restart: int, count: int,
                  max_batch: int | None, chunk_fn, evaluate: bool):
    """Restarts first_restart .. +count on the examples idx, as one batch of count×n (split
    by max_batch when given), folded into best."""
    x_i, y_i = x[idx], y[idx]
    eps_i, alpha_i = _take(cfg.eps, idx), _take(cfg.alpha, idx)
    n = len(x_i)
    pieces = [(0, n)] if max_batch is None or n <= max_batch else [
        (s, min(n, s + max_batch)) for s in range(0, n, max_batch)]
    for s, e in pieces:
        sub = slice(s, e)
        group_cfg = _replace(cfg, eps=_repeat(_take(eps_i, sub), count),
                             alpha=_repeat(_take(alpha_i, sub), count))
        x_adv, loss, fooled = chunk_fn(_repeat(x_i[sub], count), _repeat(y_i[sub], count),
                                       group_cfg, evaluate)
        m = e - s
        target = idx if len(pieces) == 1 else (
            slice(idx.start + s, idx.start + e) if isinstance(idx, slice) else idx[sub])
        for k in range(count):
            part = slice(k * m, (k + 1) * m)
            best.update(target, x_adv[part], None if loss is None else loss[part],
                        None if fooled is None else fooled[part], first_restart + k)


def _replace(cfg: _Config, **changes) -> _Config:
    return _Config(**{**cfg.__dict__, **changes})


# --------------------------------------------------------------------------- public API


def _check_inputs(model, x, y, eps, alpha, steps, restarts, norm, loss, targeted, lower, upper,
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
    if bound is None or x.dim() < 3:
        return bound
    return bound.view(-1, *[1] * (x.dim() - 2))


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != len(y):
        raise ValueError(f"model must return logits of shape [B, num_classes] = [{len(y)}, C], "
                         f"got {list(logits.shape)}")
    if _checks.values_checkable() and len(y) and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"labels y must lie in [0, {logits.shape[1]}) (the model's classes), "
                         f"got values in [{y.min().item()}, {y.max().item()}]")


def pgd(model, x: Tensor, y: Tensor, *, eps, alpha, steps: int, restarts: int = 1,
        norm: str = "linf", random_start: bool = True, loss: str = "ce", targeted: bool = False,
        lower=0.0, upper=1.0, early_stop: bool = False, precision: str = "fp32",
        return_info: bool = False, eval_mode: bool = True, input_grad_only: bool = True,
        channels_last: bool | None = None, max_batch: int | None = None,
        cuda_graph: bool = False, generator: torch.Generator | None = None):
    r"""Projected gradient descent (Madry et al.), the strongest first-order attack:

    .. math:: x_{t+1} = \mathrm{clip}_{[lo,hi]}\big(\Pi_{x+S}(x_t + \alpha\,\mathrm{sign}(\nabla_x L))\big)

    from a random start in the ε-ball, ``steps`` times, for each of ``restarts`` starts; per
    example the worst case is returned: a restart that fools the model wins (the first one),
    otherwise the one with the highest loss.

    Args:
        model: maps ``x`` (``[B, ...]`` in ``[lower, upper]``) to logits ``[B, C]``.
        x, y: inputs and labels ``[B]`` (the targets if ``targeted``).
        eps, alpha: floats or tensors ``[B]``. ``norm``: ``"linf"`` or ``"l2"``.
        loss: ``"ce"``, ``"cw"`` (margin) or ``"dlr"`` (untargeted only), maximised.
        early_stop: each next restart runs only on the examples not yet fooled (evaluation).
        precision: ``"bf16"`` runs the model under autocast; ``x_adv`` stays fp32.
        return_info: also return an :class:`AttackInfo`.
        eval_mode: attack the model in eval mode (restored afterwards); False keeps its mode.
        input_grad_only: freeze the parameters during the attack: no weight gradients are
            computed and ``.grad`` is untouched (restored afterwards).
        channels_last: run in channels_last; default: when the model's weights are.
        max_batch: most examples per forward pass; restarts are batched up to it. Default:
            all R×B at once on a GPU; on a CPU max(B, 64), since there batching restarts
            beyond that was measured slower (the activations fall out of cache).
        cuda_graph: capture the K-step attack in a CUDA graph per input shape and replay it
            (CUDA only; float ``eps``/``alpha``; see :class:`GraphedPGD`).
        generator: for the random starts.

    Returns:
        ``x_adv`` (same shape, dtype and layout as ``x``), or ``(x_adv, AttackInfo)``.
    """
    x, y, eps, alpha, lower, upper, norm = _check_inputs(
        model, x, y, eps, alpha, steps, restarts, norm, loss, targeted, lower, upper, precision,
        max_batch)
    cfg = _Config(eps, alpha, steps, norm, random_start, loss, targeted, lower, upper,
                  precision, generator)
    if max_batch is None and x.device.type == "cpu":
        max_batch = max(len(x), CPU_MIN_BATCH)
    if channels_last is None:
        channels_last = isinstance(model, nn.Module) and model_is_channels_last(model)
    x_work = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    with attack_mode(model, eval_mode=eval_mode, input_grad_only=input_grad_only) \
            if isinstance(model, nn.Module) else contextlib.nullcontext():
        if cuda_graph:
            from .graphed import graphed_chunk_fn

            chunk_fn = graphed_chunk_fn(model, x_work, cfg)
        else:
            def chunk_fn(x_c, y_c, c, evaluate):
                return attack_chunk(model, x_c, y_c, c, evaluate)
        # One restart and no info wanted: no candidates to compare, no final forward pass.
        evaluate = restarts > 1 or early_stop or return_info
        best = _run_restarts(model, x_work, y, cfg, restarts, early_stop, max_batch, chunk_fn,
                             evaluate)
    x_adv = best.x if best.x.stride() == x.stride() else torch.empty_like(x).copy_(best.x)
    if return_info:
        return x_adv, AttackInfo(best.loss, best.fooled, best.restart)
    return x_adv


def fgsm(model, x, y, *, eps, **kwargs):
    """Goodfellow et al.'s fast gradient sign method: one step of size ε from x."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False, **kwargs)


def fgsm_rs(model, x, y, *, eps, alpha=None, **kwargs):
    """Wong et al.'s FGSM with a random start: U(−ε, ε) start, one step of α = 1.25 ε."""
    return pgd(model, x, y, eps=eps, alpha=1.25 * eps if alpha is None else alpha, steps=1,
               random_start=True, **kwargs)
