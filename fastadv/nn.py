"""The one piece every model shares: inputs in [0, 1], normalised inside the model (the
RobustBench convention), so that the attack's box is the pixel range."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers (saved, moved with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """``net`` behind a per-channel ``Normalize``: takes x in [0, 1], ``[B, C, H, W]``, and
    returns ``net((x - mean) / std)``. Lets any model follow fastadv's [0, 1]-input convention;
    the statistics are buffers, so they are saved and moved with the model."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def per_channel(values: Sequence[float], channels: int) -> tuple:
    """``values`` for ``channels`` channels: one value is repeated, several kept as given."""
    return tuple(values) * channels if len(values) == 1 else tuple(values)
