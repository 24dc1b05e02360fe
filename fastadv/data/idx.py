"""MNIST-format (IDX) image sets: parsing with strict structural checks, the loader of the
official sets (MNIST, Fashion-MNIST, KMNIST: same file names, their own md5s and mirrors),
and the loader of a set of one's own (``--dataset idx:PATH``).

An IDX file is a big-endian uint32 magic number (0x08 = unsigned bytes, then the number of
dimensions), one big-endian uint32 per dimension, then exactly prod(dims) bytes; images are
3-dimensional ([N, H, W]), labels 1-dimensional ([N]). Each file may be gzipped (``.gz``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import _files
from ._files import DataFileError, DatasetNotFoundError, expected_md5, verify

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x0803: ubyte, 3 dims; 0x0801: ubyte, 1 dim
PREFIX = "idx:"


def parse_idx(data: bytes, magic: int, name: str) -> Tensor:
    """IDX bytes -> uint8 tensor of the header's dims ([N, H, W] images or [N] labels)."""
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
    if size == 0:  # torch.frombuffer refuses an empty buffer
        return torch.empty(dims, dtype=torch.uint8)
    # bytearray: torch.frombuffer wants a writable buffer.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(dims)


def read_idx(path: Path, magic: int, md5: str | None = None, advice: str | None = None) -> Tensor:
    """One IDX file, gunzipped when its name ends in .gz. ``md5`` (of the file as stored)
    is checked first when given; ``advice`` ends the ChecksumError's message."""
    if md5 is not None:
        verify(path, md5, advice)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataFileError(f"{path}: not a readable .gz ({error})") from error
    return parse_idx(data, magic, str(path))


def to_tensors(x: Tensor, y: Tensor, images: Path, labels: Path) -> tuple[Tensor, Tensor]:
    """uint8 [N, H, W] and [N] -> float32 [N, 1, H, W] in [0, 1] and int64 [N]."""
    if len(x) != len(y):
        raise DataFileError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x.unsqueeze(1).to(torch.float32).div_(255), y.to(torch.int64)


# --------------------------------------------------------------------------- official sets


@dataclass(frozen=True)
class OfficialSet:
    """One of the published MNIST-format sets: where its files may sit under the data folder
    (``folders``, searched in order; "" is the data folder itself), where a download puts
    them, and (passed at load time, so tests can replace them) its md5s and mirrors."""

    title: str
    folders: tuple[str, ...]
    download_folder: str
    home: str  # where a user can get the files by hand


def _find(root: Path, folders: Sequence[str], name: str) -> Path | None:
    """The .gz anywhere first (it can be md5-checked), then the uncompressed file."""
    places = [root / f if f else root for f in folders]
    for candidate in [p / (name + ".gz") for p in places] + [p / name for p in places]:
        if candidate.is_file():
            return candidate
    return None


def checksum_advice(title: str, folder: Path) -> str:
    return (f"If this is the official {title} file, it is corrupt or incomplete: delete it and "
            f"fetch it again (--download). If it is MNIST-format data of your own (a subset, "
            f"another dataset), load it with --dataset idx:{folder} (structural checks only), "
            f"or pass --no-verify.")


def load_official(spec: OfficialSet, root: Path, *, md5: dict[str, str], mirrors: Sequence[str],
                  download: bool = False, verify: bool = True, num_classes: int = 10):
    """(x_train, y_train, x_test, y_test) of an official set from the data folder ``root``.

    Only .gz files are md5-checked (the published md5s are of the compressed files); an
    uncompressed file, or any file with ``verify=False``, gets the structural checks only."""
    paths = {name: _find(root, spec.folders, name) for name in FILES}
    missing = [name for name, path in paths.items() if path is None]
    if missing and not download:
        target = root / spec.download_folder
        listed = "\n".join(f"  {target / (n + '.gz')}" for n in missing)
        others = ", ".join(f"{root / f if f else root}{os.sep}" for f in spec.folders
                           if f != spec.download_folder)
        raise DatasetNotFoundError(
            f"{spec.title} not found. Put these files (.gz, or uncompressed without .gz; "
            f"{others} works too):\n{listed}\nGet them from {spec.home}, or pass --download "
            f"(download=True) to fetch them.")
    for name in missing:
        paths[name] = root / spec.download_folder / (name + ".gz")
        _files.download([m + name + ".gz" for m in mirrors], paths[name],
                        expected_md5(md5, name + ".gz"))

    def read(name, magic):
        path = paths[name]
        checked = verify and path.suffix == ".gz"
        return read_idx(path, magic, expected_md5(md5, path.name) if checked else None,
                        checksum_advice(spec.title, path.parent))

    out = []
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        x, y = read(images, IMAGES_MAGIC), read(labels, LABELS_MAGIC)
        if len(y) and y.max() >= num_classes:
            raise DataFileError(f"{paths[labels]}: labels outside 0..{num_classes - 1}")
        out += to_tensors(x, y, paths[images], paths[labels])
    return tuple(out)


# --------------------------------------------------------------------------- idx:PATH


def accepted_names(name: str) -> list[str]:
    """The file names idx:PATH accepts for one of FILES, in the order tried: the MNIST name
    and its variant with a dot before "idx" (train-images.idx3-ubyte, as some archives
    unpack), "test" for "t10k", each gzipped first."""
    stems = [name, name.replace("-idx", ".idx")]
    if name.startswith("t10k"):
        stems += [s.replace("t10k", "test", 1) for s in stems]
    return [s + suffix for s in stems for suffix in (".gz", "")]


def is_idx_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def idx_folder(name: str) -> Path:
    """The folder of ``idx:PATH`` (``~`` expanded)."""
    return Path(name[len(PREFIX):]).expanduser()


def load_folder(folder: str | os.PathLike) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_test, y_test, num_classes) from a folder of four IDX files (see
    accepted_names), gzipped or not, with structural checks only (no md5): magic numbers,
    dimensions, exact lengths, as many labels as images, the same image size in both splits,
    at least two classes. The classes are 0 .. the largest label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"idx:{folder}: no such folder (idx:PATH names a folder "
                                   f"holding {', '.join(FILES)}, each .gz or not)")
    paths, missing = {}, []
    for name in FILES:
        found = [folder / n for n in accepted_names(name) if (folder / n).is_file()]
        if found:
            paths[name] = found[0]
        else:
            missing.append(name)
    if missing:
        raise DatasetNotFoundError(
            f"idx:{folder}: missing " + ", ".join(f"{n}[.gz]" for n in missing)
            + f" (found: {', '.join(sorted(os.listdir(folder))) or 'nothing'}). An IDX set is "
            f"four files: {', '.join(FILES)}, each .gz or not; "
            f"'.idx' for '-idx' and 'test' for 't10k' are accepted too.")
    x_train, y_train = to_tensors(read_idx(paths[TRAIN_IMAGES], IMAGES_MAGIC),
                                  read_idx(paths[TRAIN_LABELS], LABELS_MAGIC),
                                  paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
    x_test, y_test = to_tensors(read_idx(paths[TEST_IMAGES], IMAGES_MAGIC),
                                read_idx(paths[TEST_LABELS], LABELS_MAGIC),
                                paths[TEST_IMAGES], paths[TEST_LABELS])
    for split, x, where in (("training", x_train, paths[TRAIN_IMAGES]),
                            ("test", x_test, paths[TEST_IMAGES])):
        if len(x) == 0 or min(x.shape[2:]) == 0:
            raise DataFileError(f"{where}: no {split} images (dims {list(x.shape)})")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFileError(f"idx:{folder}: training images are {tuple(x_train.shape[2:])} "
                            f"but test images {tuple(x_test.shape[2:])}")
    classes = len(torch.unique(y_train))
    if classes < 2:
        raise DataFileError(f"{paths[TRAIN_LABELS]}: {classes} class in the training labels; "
                            "classification needs at least 2")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return x_train, y_train, x_test, y_test, num_classes
