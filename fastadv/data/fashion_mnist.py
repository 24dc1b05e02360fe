"""Fashion-MNIST (Xiao et al., Zalando): MNIST's format and file names, its own md5s. The
files sit in data_dir/fashion-mnist (where a download puts them), data_dir/FashionMNIST/raw
(torchvision's layout) or data_dir itself."""

from __future__ import annotations

from torch import Tensor

from ._files import data_root
from .idx import OfficialSet, load_official

# Module-level so tests can point it at file:// (pytorch/vision torchvision/datasets/mnist.py).
MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
# The published md5s of the .gz files (pytorch/vision torchvision/datasets/mnist.py).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SPEC = OfficialSet("Fashion-MNIST", ("fashion-mnist", "FashionMNIST/raw", ""), "fashion-mnist",
                   "https://github.com/zalandoresearch/fashion-mnist")


def load(data_dir=None, *, download: bool = False, checksums: dict[str, str] | None = None,
         verify: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`fastadv.data.mnist.load`, for Fashion-MNIST (60000 + 10000 images, 28x28)."""
    return load_official(SPEC, data_root(data_dir), md5=MD5 if checksums is None else checksums,
                         mirrors=MIRRORS, download=download, verify=verify)
