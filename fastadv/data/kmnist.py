"""Kuzushiji-MNIST (Clanuwat et al.): MNIST's format and file names, its own md5s. The files
sit in data_dir/kmnist (where a download puts them), data_dir/KMNIST/raw (torchvision's
layout) or data_dir itself."""

from __future__ import annotations

from torch import Tensor

from ._files import data_root
from .idx import OfficialSet, load_official

# Module-level so tests can point it at file:// (pytorch/vision torchvision/datasets/mnist.py).
MIRRORS = ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"]
# The published md5s of the .gz files (pytorch/vision torchvision/datasets/mnist.py).
MD5 = {
    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}
SPEC = OfficialSet("KMNIST", ("kmnist", "KMNIST/raw", ""), "kmnist",
                   "https://github.com/rois-codh/kmnist")


def load(data_dir=None, *, download: bool = False, checksums: dict[str, str] | None = None,
         verify: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`fastadv.data.mnist.load`, for KMNIST (60000 + 10000 images, 28x28)."""
    return load_official(SPEC, data_root(data_dir), md5=MD5 if checksums is None else checksums,
                         mirrors=MIRRORS, download=download, verify=verify)
