"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no download."""

from __future__ import annotations

import torch
from torch import Tensor

TRAIN_FRACTION = 0.8


def load(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train [1437, 1, 8, 8], y_train [1437], x_test [360, 1, 8, 8], y_test [360]):
    pixels (0..16) / 16 as float32 in [0, 1], labels int64. The split is a permutation
    seeded by `seed`, first 80% train (the split fastadv.demo has always used)."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:int(TRAIN_FRACTION * len(y))], order[int(TRAIN_FRACTION * len(y)):]
    return x[train], y[train], x[test], y[test]
