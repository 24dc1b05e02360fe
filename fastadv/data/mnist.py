"""MNIST from its four IDX files, each as .gz or uncompressed, in the data folder or in
data_dir/MNIST/raw (torchvision's layout).

Only the .gz files are md5-checked: the published md5s are of the compressed files, and
there are none for the uncompressed ones. An uncompressed file is checked strictly instead
(magic number, dimensions, exact file length, label range), as is every file with
``verify=False`` (MNIST-format data that is not the official MNIST)."""

from __future__ import annotations

from torch import Tensor

from ._files import data_root
from .idx import (FILES, IMAGES_MAGIC, LABELS_MAGIC, TEST_IMAGES, TEST_LABELS,  # noqa: F401
                  TRAIN_IMAGES, TRAIN_LABELS, OfficialSet, load_official, parse_idx)

# Base URLs tried in order, as torchvision now orders them: its own S3 copy first (the
# original site refuses scripted downloads). Module-level so tests can point it at file://.
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
# The published md5s of the .gz files (pytorch/vision torchvision/datasets/mnist.py).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MEAN, STD = (0.1307,), (0.3081,)
SPEC = OfficialSet("MNIST", ("", "MNIST/raw"), "", MIRRORS[0])


def load(data_dir=None, *, download: bool = False, checksums: dict[str, str] | None = None,
         verify: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train [60000, 1, 28, 28], y_train [60000], x_test [10000, 1, 28, 28], y_test [10000]):
    x float32 in [0, 1], y int64, from `data_dir` (default: $FASTADV_DATA or
    ~/.cache/fastadv/data). download=True fetches the missing .gz files into data_dir.
    `checksums` replaces the published md5 table (keys: the .gz names); verify=False skips
    the md5 check (structural checks only)."""
    return load_official(SPEC, data_root(data_dir), md5=MD5 if checksums is None else checksums,
                         mirrors=MIRRORS, download=download, verify=verify)
