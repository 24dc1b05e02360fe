"""Clean and PGD accuracy in one pass over the data: the quick check the trainer runs every
epoch, the capacity sweep runs per model and the benchmarks run per row (the full, trusted
evaluation is :func:`fastadv.evaluate`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .attacks import attack_mode, pgd
from .attacks.core import precision_autocast


def clean_and_pgd_correct(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int,
                          restarts: int = 1, alpha: float | None = None, batch_size: int = 256,
                          precision: str = "fp32",
                          generator: torch.Generator | None = None) -> tuple[int, int]:
    """How many of ``x`` ``[N, C, H, W]`` (labels ``y`` ``[N]``) the model classifies
    correctly, clean and under PGD-``steps`` at l-inf ``eps`` (α = 2.5ε/steps, Madry et al.,
    unless given; ``restarts`` random starts, the worst kept). The model runs in eval mode
    (restored afterwards); ``precision="bf16"`` runs it under autocast."""
    return correct_over_batches(model, zip(x.split(batch_size), y.split(batch_size)), eps=eps,
                                steps=steps, restarts=restarts, alpha=alpha,
                                precision=precision, generator=generator)


def correct_over_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                         eps: float, steps: int, restarts: int = 1, alpha: float | None = None,
                         precision: str = "fp32",
                         generator: torch.Generator | None = None) -> tuple[int, int]:
    """:func:`clean_and_pgd_correct` over ``(x, y)`` batches already on the model's device
    (a streamed dataset's): the same counts as over the concatenated tensors, batch for
    batch."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
    clean = robust = 0
    with attack_mode(model):
        for xb, yb in batches:
            with torch.no_grad(), precision_autocast(xb.device.type, precision):
                clean += (model(xb).argmax(1) == yb).sum().item()
            x_adv = pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                        precision=precision, generator=generator)
            with torch.no_grad(), precision_autocast(xb.device.type, precision):
                robust += (model(x_adv).argmax(1) == yb).sum().item()
    return clean, robust
