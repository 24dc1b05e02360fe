"""MNIST from its four IDX files, each as .gz or uncompressed, in the data folder or in
data_dir/MNIST/raw (torchvision's layout).

Only the .gz files are md5-checked: the published md5s are of the compressed files, and
there are none for the uncompressed ones. An uncompressed file is checked strictly instead
(magic number, dimensions, exact file length, label range)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import torch
from torch import Tensor

from . import _files
from ._files import DataFileError, DatasetNotFoundError, data_root, expected_md5, verify

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
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
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x0803: ubyte, 3 dims; 0x0801: ubyte, 1 dim


def parse_idx(data: bytes, magic: int, name: str) -> Tensor:
    """IDX bytes -> uint8 tensor of the header's dims ([N, H, W] images or [N] labels).

    Header: a big-endian uint32 magic (0x08 = unsigned bytes, then the number of dims), one
    big-endian uint32 per dim, then exactly prod(dims) bytes."""
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise DataFileError(f"{name}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataFileError(f"{name}: IDX magic number {found}, expected {magic} "
                            f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    header = 4 + 4 * ndim
    size = 1
    for d in dims:
        size *= d
    if len(data) != header + size:
        raise DataFileError(f"{name}: {len(data)} bytes, but the header's dims {dims} "
                            f"need {header + size} (truncated or corrupt)")
    # bytearray: torch.frombuffer wants a writable buffer.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(dims)


def _find(root: Path, name: str) -> Path | None:
    """The .gz anywhere first (it can be md5-checked), then the uncompressed file."""
    folders = (root, root / "MNIST" / "raw")
    for candidate in [f / (name + ".gz") for f in folders] + [f / name for f in folders]:
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path, magic: int, checksums: dict[str, str]) -> Tensor:
    if path.suffix != ".gz":
        return parse_idx(path.read_bytes(), magic, str(path))
    verify(path, expected_md5(checksums, path.name))
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataFileError(f"{path}: not a readable .gz ({error})") from error
    return parse_idx(data, magic, str(path))


def _missing_message(root: Path, missing: list[str]) -> str:
    paths = "\n".join(f"  {root / (n + '.gz')}" for n in missing)
    return (f"MNIST not found. Put these files (.gz, or uncompressed without .gz; "
            f"{root / 'MNIST' / 'raw'}{os.sep} works too):\n{paths}\n"
            f"Get them from {MIRRORS[0]}, or pass --download (download=True) to fetch them.")


def load(data_dir=None, *, download: bool = False,
         checksums: dict[str, str] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train [60000, 1, 28, 28], y_train [60000], x_test [10000, 1, 28, 28], y_test [10000]):
    x float32 in [0, 1], y int64, from `data_dir` (default: $FASTADV_DATA or
    ~/.cache/fastadv/data). download=True fetches the missing .gz files into data_dir.
    `checksums` replaces the published md5 table (keys: the .gz names)."""
    checksums = MD5 if checksums is None else checksums
    root = data_root(data_dir)
    paths = {name: _find(root, name) for name in FILES}
    missing = [name for name, path in paths.items() if path is None]
    if missing and not download:
        raise DatasetNotFoundError(_missing_message(root, missing))
    for name in missing:
        paths[name] = root / (name + ".gz")
        _files.download([m + name + ".gz" for m in MIRRORS], paths[name],
                        expected_md5(checksums, name + ".gz"))
    x_train, y_train = _pair(paths[TRAIN_IMAGES], paths[TRAIN_LABELS], checksums)
    x_test, y_test = _pair(paths[TEST_IMAGES], paths[TEST_LABELS], checksums)
    return x_train, y_train, x_test, y_test


def _pair(images: Path, labels: Path, checksums: dict[str, str]) -> tuple[Tensor, Tensor]:
    x = _read(images, IMAGES_MAGIC, checksums)
    y = _read(labels, LABELS_MAGIC, checksums)
    if len(x) != len(y):
        raise DataFileError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if len(y) and y.max() > 9:
        raise DataFileError(f"{labels}: labels outside 0..9")
    return x.unsqueeze(1).to(torch.float32).div_(255), y.to(torch.int64)
