"""Weight averaging (Gowal et al. 2020, Rebuffi et al. 2021): an exponential moving average
of the weights, updated after every optimizer step, is the model that is validated, chosen
as best.pt and reported.

BatchNorm: the averaged model's running statistics are averaged like its weights (every
floating buffer: the EMA of the raw model's statistics, as torch's ``AveragedModel`` with
``use_buffers=True`` and timm's ``ModelEmaV3`` do), not re-estimated by a pass over the
data; integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    r""":math:`\bar\theta_t = d_t\,\bar\theta_{t-1} + (1 - d_t)\,\theta_t` with the warm-up
    decay :math:`d_t = \min(d, (1 + t) / (10 + t))`, ``t`` the updates before this one
    (:math:`\bar\theta_0` is the initial weights). ``model`` is the training's plain module
    (no DDP or compile wrapper): its parameters and buffers are read in place."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        tracked = list(model.parameters()) + list(model.buffers())
        averaged = list(self.module.parameters()) + list(self.module.buffers())
        self._lerped = [(a, t) for a, t in zip(averaged, tracked) if a.is_floating_point()]
        self._copied = [(a, t) for a, t in zip(averaged, tracked) if not a.is_floating_point()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        for avg, now in self._lerped:
            avg.lerp_(now, weight)
        for avg, now in self._copied:
            avg.copy_(now)
        self.updates += 1

    def state_dict(self) -> dict:
        """What resumes the average besides its weights (which checkpoints keep as the
        model's)."""
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: dict, state: dict) -> None:
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
