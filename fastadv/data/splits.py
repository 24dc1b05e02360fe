"""How a training set is split: the held-out validation examples (model selection never sees
the test set), drawn by the run's seed."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import TrainConfigError

# The default validation split: this fraction of the training set, at most VAL_CAP examples.
VAL_FRACTION, VAL_CAP = 0.1, 1000


def validation_size(val_size: int | None, n_train: int) -> int:
    """Examples held out of the ``n_train`` training examples: ``val_size`` when given, else
    VAL_FRACTION of them, at most VAL_CAP (and at least 1)."""
    if val_size is not None:
        return val_size
    return max(1, min(VAL_CAP, round(VAL_FRACTION * n_train)))


def split_indices(n: int, val_size: int | None, seed: int, held_out: int = 1) -> list[Tensor]:
    """``held_out`` validation-sized parts of ``range(n)`` and the rest (train, last), drawn
    by ``seed``."""
    size = validation_size(val_size, n)
    if size * held_out >= n:
        raise TrainConfigError(f"--val-size {size} leaves no training data ({n} examples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = [order[i * size:(i + 1) * size] for i in range(held_out)]
    return parts + [order[held_out * size:]]


def check_batch_size(batch_size: int, n_train: int) -> None:
    if batch_size > n_train:
        raise TrainConfigError(f"--batch-size {batch_size} exceeds the {n_train} "
                               "training examples")
