"""Per-example attack objectives, all to be maximised. Untargeted, `y` are the true labels;
targeted, `y` are the targets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "cw", "dlr")


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} z_j."""
    return logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)


def cross_entropy(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    loss = F.cross_entropy(logits, y, reduction="none")
    return -loss if targeted else loss


def margin(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (targeted: z_t - max_{j != t} z_j)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = _other_max(logits, y)
    return z_y - other if targeted else other - z_y


def dlr(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Croce & Hein's difference of logits ratio: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3),
    invariant to shifts and scales of the logits (untargeted only: the targeted form needs
    both the true label and the target)."""
    if targeted:
        raise ValueError("loss='dlr' is untargeted; use loss='ce' or 'cw' with targeted=True")
    if logits.shape[1] < 3:
        raise ValueError("loss='dlr' needs at least 3 classes")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def objective(name: str):
    return {"ce": cross_entropy, "cw": margin, "dlr": dlr}[name]
