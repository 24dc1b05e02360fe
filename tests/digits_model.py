"""A small CNN trained on scikit-learn's digits in seconds: the real model attacks are
tested on."""

import torch
import torch.nn.functional as F

from fastadv.demo import load
from fastadv.models import SmallCNN


def train_digits_cnn(seed=0, epochs=15):
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = load(seed)
    model = SmallCNN(in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=gen).split(64):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), x_test, y_test


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
