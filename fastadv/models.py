"""Models that take inputs in [0, 1] and normalise inside (the RobustBench convention).

``build_model(name, ...)`` makes any of ``MODELS`` for a dataset's shape, classes and
statistics; checkpoints record those arguments so ``fastadv.load_model`` can rebuild it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model_specs import build_from_spec, is_model_spec
from .nn import Normalize, per_channel

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; `width` scales every layer (for capacity studies)."""

    def __init__(self, in_channels=1, num_classes=10, width=1, mean=(0.5,), std=(0.5,)):
        super().__init__()
        c1, c2 = 16 * width, 32 * width
        self.normalize = Normalize(per_channel(mean, in_channels), per_channel(std, in_channels))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(c2 * 16, 64 * width), nn.ReLU(),
                                  nn.Linear(64 * width, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """He et al. 2016 pre-activation ResNet-18 for 32x32 inputs (~1.1 GFLOP per image
    forward, counting a multiply-add as two FLOPs), as used by Rice et al. and Wong et al."""

    def __init__(self, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, in_channels=3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class WideResNet(nn.Module):
    """Zagoruyko & Komodakis' wide ResNet; WRN-34-10 (46M parameters, ~13 GFLOP per 32x32
    image forward) is the capacity Madry et al. and TRADES train CIFAR-10 with."""

    def __init__(self, depth=34, widen=10, num_classes=10, in_channels=3, mean=CIFAR10_MEAN,
                 std=CIFAR10_STD):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(blocks):
                # The wide ResNet's block is the pre-activation block (BN-ReLU-conv twice).
                layers.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class MadryCNN(nn.Module):
    """Madry et al.'s MNIST network: conv5x5(32) - maxpool - conv5x5(64) - maxpool - fc(1024)
    - fc(classes). `width` scales it as the paper's capacity study does (2w and 4w filters,
    a 64w-unit hidden layer): width=16 is the network of the paper's MNIST results."""

    def __init__(self, in_channels=1, num_classes=10, image_size=28, width=16, mean=(0.0,),
                 std=(1.0,)):
        super().__init__()
        c1, c2, hidden = 2 * width, 4 * width, 64 * width
        self.normalize = Normalize(per_channel(mean, in_channels), per_channel(std, in_channels))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        side = image_size // 4
        self.head = nn.Sequential(nn.Linear(c2 * side * side, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


MODELS = ("preact-resnet18", "wrn-34-10", "madry-cnn", "small-cnn")

# What build_model accepts, checked before anything is allocated: a checkpoint's recorded
# arguments reach it too, and a crafted one must not make it allocate a terabyte first.
ARG_RANGES = {"num_classes": (1, 1_000_000), "in_channels": (1, 1024),
              "image_size": (1, 16_384), "width": (1, 1024)}
MAX_PARAMETERS = 2_000_000_000  # 8 GB of fp32 weights: far beyond any built-in's use


class ModelArgsError(ValueError):
    """An argument of build_model that no model can be built with; names the argument."""


def check_model_args(name: object, *, num_classes: object, in_channels: object,
                     image_size: object, mean: object, std: object,
                     width: object = None) -> None:
    """Raise ModelArgsError, naming the argument, unless every argument has the right type and
    lies in ``ARG_RANGES`` (``width`` may be None), ``mean``/``std`` hold 1 or
    ``in_channels`` finite numbers (``std`` positive), and a built-in model of these
    arguments has at most ``MAX_PARAMETERS`` parameters (counted on the meta device, so a
    huge ``width`` or ``image_size`` is refused without being allocated)."""
    if not isinstance(name, str) or not name:
        raise ModelArgsError(f"model name must be a non-empty string, got {name!r}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("image_size", image_size), ("width", width)):
        if arg == "width" and value is None:
            continue
        low, high = ARG_RANGES[arg]
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ModelArgsError(f"{arg} must be an integer, got {value!r} "
                                 f"({type(value).__name__})")
        if not low <= value <= high:
            raise ModelArgsError(f"{arg} must lie in [{low}, {high}], got {value}")
    for arg, values in (("mean", mean), ("std", std)):
        if (not isinstance(values, Sequence) or isinstance(values, str)
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                           for v in values)):
            raise ModelArgsError(f"{arg} must be a sequence of numbers, got {values!r}")
        if len(values) not in (1, in_channels):
            raise ModelArgsError(f"{arg} must hold 1 or in_channels = {in_channels} values, "
                                 f"got {len(values)}")
        if not all(math.isfinite(v) for v in values) or (
                arg == "std" and not all(v > 0 for v in values)):
            raise ModelArgsError(f"{arg} values must be finite{' and positive' * (arg == 'std')}"
                                 f", got {tuple(values)}")
    if name in MODELS:
        with torch.device("meta"):  # shapes only: nothing is allocated
            count = sum(p.numel() for p in _build(name, num_classes, in_channels, image_size,
                                                  (0.5,), (0.5,), width).parameters())
        if count > MAX_PARAMETERS:
            raise ModelArgsError(f"{name} with width={width}, image_size={image_size}, "
                                 f"num_classes={num_classes} would have {count:,} parameters "
                                 f"(at most {MAX_PARAMETERS:,})")


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                width: int | None = None, pretrained: bool = False) -> nn.Module:
    """One of ``MODELS`` for inputs ``[B, in_channels, image_size, image_size]`` in [0, 1],
    normalising with the dataset's per-channel ``mean``/``std`` inside. ``width`` scales the
    small CNNs (capacity studies); the ResNets have fixed widths. ``name`` may also be a
    model spec (torchvision:NAME, timm:NAME, package.module:factory; see
    fastadv.model_specs); ``pretrained`` applies to torchvision: and timm: specs (their
    weights from the local cache), and a checkpoint rebuilds without it (its weights fill
    the model). Every argument is checked first (:func:`check_model_args`)."""
    check_model_args(name, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size, mean=mean, std=std, width=width)
    mean, std = per_channel(mean, in_channels), per_channel(std, in_channels)
    if is_model_spec(name):
        return build_from_spec(name, num_classes=num_classes, in_channels=in_channels,
                               mean=mean, std=std, pretrained=pretrained)
    return _build(name, num_classes, in_channels, image_size, mean, std, width)


def _build(name, num_classes, in_channels, image_size, mean, std, width) -> nn.Module:
    if name == "preact-resnet18":
        return PreActResNet18(num_classes, mean, std, in_channels)
    if name == "wrn-34-10":
        return WideResNet(34, 10, num_classes=num_classes, in_channels=in_channels, mean=mean,
                          std=std)
    if name == "madry-cnn":
        if image_size % 4:
            raise ValueError(f"madry-cnn needs an image size divisible by 4, got {image_size}")
        return MadryCNN(in_channels, num_classes, image_size, width or 16, mean, std)
    if name == "small-cnn":
        return SmallCNN(in_channels, num_classes, width or 1, mean, std)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
