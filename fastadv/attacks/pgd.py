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

from ..ops import keep_best_
from .core import (AttackConfig, attack_chunk, attack_mode, check_inputs,
                   model_is_channels_last)
from .graphed import graphed_chunk_fn

# Fewest rows per forward pass on a CPU when batching restarts (see pgd's max_batch).
CPU_MIN_BATCH = 64


@dataclass
class AttackInfo:
    """Per example, for the candidate kept: the attack objective (higher is stronger),
    whether it fools the model, and which restart it came from."""

    loss: Tensor  # [B] float32
    fooled: Tensor  # [B] bool
    restart: Tensor  # [B] int64


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


def _run_restarts(model, x, y, cfg: AttackConfig, restarts: int, early_stop: bool,
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


def _attack_group(best: _Best, idx, x, y, cfg: AttackConfig, first_restart: int, count: int,
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


def _replace(cfg: AttackConfig, **changes) -> AttackConfig:
    return AttackConfig(**{**cfg.__dict__, **changes})


# --------------------------------------------------------------------------- public API


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
    x, y, eps, alpha, lower, upper, norm = check_inputs(
        model, x, y, eps, alpha, steps, restarts, norm, loss, targeted, lower, upper, precision,
        max_batch)
    cfg = AttackConfig(eps, alpha, steps, norm, random_start, loss, targeted, lower, upper,
                  precision, generator)
    if max_batch is None and x.device.type == "cpu":
        max_batch = max(len(x), CPU_MIN_BATCH)
    if channels_last is None:
        channels_last = isinstance(model, nn.Module) and model_is_channels_last(model)
    x_work = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    with attack_mode(model, eval_mode=eval_mode, input_grad_only=input_grad_only) \
            if isinstance(model, nn.Module) else contextlib.nullcontext():
        if cuda_graph:
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
