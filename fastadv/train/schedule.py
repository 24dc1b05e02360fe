"""Learning-rate schedules as multipliers of the peak rate, evaluated per optimizer step (so
the cyclic schedule is smooth within an epoch)."""

from __future__ import annotations

import math

import torch


def lr_factor(schedule: str, progress: float) -> float:
    """The multiplier at ``progress`` in [0, 1] of training.

    piecewise: 1, x0.1 from 50 %, x0.01 from 75 % (Madry et al., Rice et al.); cyclic:
    linear 0 -> 1 at 40 %, -> 0 at the end (Wong et al.); cosine: (1 + cos(pi t)) / 2;
    constant: 1.
    """
    if schedule == "piecewise":
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    if schedule == "cyclic":
        peak = 0.4
        return progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}")


def scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int):
    """A LambdaLR stepped once per optimizer step over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step / max(1, total_steps)))
