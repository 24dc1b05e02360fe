"""Datasets as whole tensors in memory (CIFAR-10 is 0.6 GB as float32), ready to move to the
GPU once, plus batch augmentation that runs there.

    ds = load_dataset("cifar10", "~/data", download=True)
    x = random_crop_flip(ds.x_train[idx].cuda()) if ds.augment else ds.x_train[idx].cuda()

``cifar10``, ``mnist``, ``fashion-mnist`` and ``kmnist`` load from their standard
distribution files (md5-checked); ``idx:PATH`` loads any MNIST-format (IDX) set of one's own
from the folder PATH (structural checks only); ``digits`` (scikit-learn's 8x8 digits) and
``synthetic`` need no files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from . import cifar10, digits, fashion_mnist, folder, idx, kmnist, mnist
from ._files import ChecksumError, DataFileError, DatasetNotFoundError, DownloadError
from .augment import random_crop_flip
from .synthetic import synthetic

DATASETS = ("cifar10", "mnist", "digits", "synthetic", "fashion-mnist", "kmnist")
# The published MNIST-format sets: loaded by one IDX reader, md5-checked unless verify=False.
MNIST_FORMAT = {"mnist": mnist, "fashion-mnist": fashion_mnist, "kmnist": kmnist}


def is_dataset(name) -> bool:
    """Whether ``name`` is one of DATASETS, an ``idx:PATH`` set or a ``folder:PATH`` of
    images (streamed: see fastadv.data.folder; load_dataset does not hold it in memory)."""
    return (name in DATASETS or (idx.is_idx_name(name) and len(name) > len(idx.PREFIX))
            or folder.is_folder_name(name))


# eq=False: the generated __eq__ would compare tensors, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held as CPU tensors: x float32 [N, C, H, W] in [0, 1], contiguous;
    y int64 [N]. `mean`/`std` (per channel) are what models normalise with; `augment` says
    whether training should use random_crop_flip."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool

    def __post_init__(self):
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.dtype != torch.float32 or x.dim() != 4 or y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(
                    f"{self.name} {split}: want x float32 [N, C, H, W] and y int64 [N], "
                    f"got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
            if len(x) != len(y):
                raise ValueError(f"{self.name} {split}: {len(x)} images but {len(y)} labels")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {tuple(self.x_train.shape[1:])} and "
                             f"test images {tuple(self.x_test.shape[1:])} differ in shape")
        if not len(self.mean) == len(self.std) == self.x_train.shape[1]:
            raise ValueError(f"{self.name}: mean and std need one value per channel")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std over all train pixels."""
    std, mean = torch.std_mean(x, dim=(0, 2, 3), correction=0)
    # A constant channel (possible in data of one's own) must not divide by zero.
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-6).tolist())


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 seed: int = 0, synthetic_shape=(3, 32, 32), synthetic_train: int = 50_000,
                 synthetic_test: int = 10_000, num_classes: int = 10,
                 verify: bool = True) -> Dataset:
    """Load one of DATASETS, or ``idx:PATH``, as a Dataset.

    data_dir (cifar10 and the MNIST-format sets): the folder holding the files; default
    $FASTADV_DATA, else ~/.cache/fastadv/data. download=True fetches missing files
    (md5-checked). Missing files otherwise raise DatasetNotFoundError saying which files go
    where. verify=False (MNIST-format sets only) skips the md5 check: structural checks only.
    ``idx:PATH``: the four IDX files in the folder PATH (see fastadv.data.idx.load_folder);
    its classes are 0 .. the largest label.
    seed: the digits train/test split, and the synthetic data (train uses seed*2+1, test
    seed*2+2, so the two never share a noise stream). synthetic_* and num_classes apply to
    synthetic only."""
    if not is_dataset(name):
        raise ValueError(f"name must be one of {', '.join(DATASETS)} or idx:PATH; got {name!r}")
    if folder.is_folder_name(name):
        raise ValueError(f"{name}: an image folder is streamed, not loaded whole "
                         "(fastadv.data.folder.scan_folder and ImageFiles read it)")
    if name != "synthetic" and num_classes != 10:
        raise ValueError(f"num_classes applies to synthetic only ({name} has its own), "
                         f"got {num_classes}")
    if not verify and name not in MNIST_FORMAT and not idx.is_idx_name(name):
        raise ValueError(f"verify=False applies to the MNIST-format sets "
                         f"({', '.join(MNIST_FORMAT)}, idx:PATH), not {name}")
    if name == "cifar10":
        x_train, y_train, x_test, y_test = cifar10.load(data_dir, download=download)
        mean, std, augment = cifar10.MEAN, cifar10.STD, True
    elif name == "mnist":
        x_train, y_train, x_test, y_test = mnist.load(data_dir, download=download, verify=verify)
        mean, std, augment = mnist.MEAN, mnist.STD, False
    elif name in MNIST_FORMAT:
        x_train, y_train, x_test, y_test = MNIST_FORMAT[name].load(data_dir, download=download,
                                                                   verify=verify)
        (mean, std), augment = _channel_stats(x_train), False
    elif idx.is_idx_name(name):
        x_train, y_train, x_test, y_test, num_classes = idx.load_folder(idx.idx_folder(name))
        (mean, std), augment = _channel_stats(x_train), False
    elif name == "digits":
        x_train, y_train, x_test, y_test = digits.load(seed)
        (mean, std), augment = _channel_stats(x_train), False
    else:
        shape = tuple(synthetic_shape)
        if len(shape) != 3:
            raise ValueError(f"synthetic_shape must be (C, H, W), got {synthetic_shape!r}")
        x_train, y_train = synthetic(synthetic_train, shape, num_classes, seed * 2 + 1)
        x_test, y_test = synthetic(synthetic_test, shape, num_classes, seed * 2 + 2)
        # Crops of 4 pixels are CIFAR-sized; on small images they would cut away most of it.
        (mean, std), augment = _channel_stats(x_train), min(shape[1:]) >= 32
    return Dataset(name, x_train.contiguous(), y_train, x_test.contiguous(), y_test, num_classes,
                   tuple(mean), tuple(std), augment)


def load_run_dataset(config: dict, data_dir: str | None = None, *,
                     download: bool = False) -> Dataset:
    """The dataset a training run used, loaded as the trainer loaded it: the digits split and
    the synthetic data depend on the run's seed and sizes, so its test split holds only
    examples training never saw. ``config`` is a run's ``config.json`` (or a checkpoint's
    ``"config"``); ``data_dir`` defaults to the run's."""
    size = config.get("image_size", 32)
    return load_dataset(config["dataset"], data_dir or config.get("data_dir"),
                        download=download, seed=config.get("seed", 0),
                        synthetic_shape=(3, size, size),
                        synthetic_train=config.get("synthetic_train", 50_000),
                        synthetic_test=config.get("synthetic_test", 10_000),
                        verify=config.get("verify", True))


def normalize_dataset(dataset: str) -> str:
    """idx:PATH and folder:PATH with PATH made absolute (the run's config names the folder
    wherever it is read from); other names unchanged."""
    for prefix in (idx.PREFIX, folder.PREFIX):
        if dataset.startswith(prefix) and len(dataset) > len(prefix):
            return prefix + os.path.abspath(os.path.expanduser(dataset[len(prefix):]))
    return dataset


__all__ = [
    "ChecksumError", "DATASETS", "DataFileError", "Dataset", "DatasetNotFoundError",
    "DownloadError", "MNIST_FORMAT", "is_dataset", "load_dataset", "load_run_dataset",
    "normalize_dataset", "random_crop_flip", "synthetic",
]
