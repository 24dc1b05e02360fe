"""A tiny image folder for the trainer's tests: class-coloured PNGs of odd sizes (the
transforms resize and crop them), with a learnable signal and some noise."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def make_image_folder(root, *, classes: int = 3, per_class: int = 12, splits=("train",),
                      seed: int = 0, size=(26, 30)) -> str:
    """``root/<split>/c<k>/<i>.png`` for each split; returns ``root`` as a str."""
    rng = np.random.default_rng(seed)
    for split in splits:
        count = per_class if split == "train" else max(2, per_class // 3)
        for k in range(classes):
            folder = os.path.join(root, split, f"c{k}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float64)
                noise = rng.normal(0, 40, size=(*size, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.png"))
    return str(root)


FACTORY_MODULE = '''
import torch
from torch import nn


def tiny_net(num_classes):
    """A small CNN for any square input size."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, num_classes))


def no_classes():
    return tiny_net(3)


def not_a_module(num_classes):
    return "a string"


def wrong_width(num_classes):
    return tiny_net(num_classes + 2)
'''


def write_factory_module(folder, name: str = "my_models") -> str:
    """A module of model factories in ``folder`` (run the trainer with cwd there)."""
    with open(os.path.join(folder, f"{name}.py"), "w") as f:
        f.write(FACTORY_MODULE)
    return name
