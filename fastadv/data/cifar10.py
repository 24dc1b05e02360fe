"""CIFAR-10 from the official "python version" archive (cifar-10-python.tar.gz), either the
archive itself or its extracted folder cifar-10-batches-py/ in the data folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _files
from ._files import (DataFileError, DatasetNotFoundError, data_root, expected_md5, safe_extract,
                     verify)

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# Base URLs tried in order (a module-level list so tests can point it at a file:// fake).
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
# The published md5s, as torchvision lists them (pytorch/vision torchvision/datasets/cifar.py).
MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One pickled batch -> (x uint8 [N, 3, 32, 32], y int64 [N]).

    Each row of b"data" is 3072 bytes: the 1024 red pixels row by row, then green, then blue,
    so a reshape to [N, 3, 32, 32] is already CHW."""
    with open(path, "rb") as f:
        # latin1 as torchvision does: the files are Python 2 pickles holding numpy arrays.
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise DataFileError(f"{path}: not a CIFAR-10 batch (a pickled {type(entry).__name__})")
    # Python 2's str keys load as str; batches pickled under Python 3 have bytes keys.
    data = entry.get("data", entry.get(b"data"))
    labels = entry.get("labels", entry.get(b"labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise DataFileError(f"{path}: not a CIFAR-10 batch (want uint8 data [N, 3072], N labels)")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y) and (y.min() < 0 or y.max() >= 10):
        raise DataFileError(f"{path}: labels outside 0..9")
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32), y


def _missing_message(root: Path, missing: list[str]) -> str:
    folder = root / FOLDER
    return (f"CIFAR-10 not found. Put either the archive\n  {root / ARCHIVE}\n"
            f"or its extracted folder\n  {folder}{os.sep}  (data_batch_1..5, test_batch; "
            f"missing: {', '.join(missing)})\n"
            f"there. Get it from {MIRRORS[0]}{ARCHIVE}, or pass --download "
            f"(download=True) to fetch it.")


def load(data_dir=None, *, download: bool = False,
         checksums: dict[str, str] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train [50000, 3, 32, 32], y_train [50000], x_test [10000, 3, 32, 32], y_test [10000]):
    x float32 in [0, 1], y int64, from `data_dir` (default: $FASTADV_DATA or
    ~/.cache/fastadv/data). Every batch file is md5-checked before it is unpickled (pickle
    can run code), and the archive before it is extracted. `checksums` replaces the
    published md5 table (tests use it with tiny files in the real format)."""
    checksums = MD5 if checksums is None else checksums
    root = data_root(data_dir)
    folder, archive = root / FOLDER, root / ARCHIVE
    names = TRAIN_FILES + TEST_FILES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        archive_md5 = expected_md5(checksums, ARCHIVE)
        if archive.is_file():
            verify(archive, archive_md5)
        elif download:
            _files.download([m + ARCHIVE for m in MIRRORS], archive, archive_md5)  # verifies
        else:
            raise DatasetNotFoundError(_missing_message(root, missing))
        safe_extract(archive, root)
        still = [n for n in names if not (folder / n).is_file()]
        if still:
            raise DataFileError(f"{archive}: has no {FOLDER}/{', '.join(still)}")
    for name in names:
        verify(folder / name, expected_md5(checksums, name))
    train = [_read_batch(folder / n) for n in TRAIN_FILES]
    x_test, y_test = _read_batch(folder / TEST_FILES[0])
    x_train = torch.cat([x for x, _ in train])
    y_train = torch.cat([y for _, y in train])
    return _to_unit(x_train), y_train, _to_unit(x_test), y_test


def _to_unit(x: Tensor) -> Tensor:
    return x.to(torch.float32).div_(255)
