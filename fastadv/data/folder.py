"""Image sets of one's own in an ImageFolder-style layout (``--dataset folder:PATH``):

    PATH/train/<class>/<image files>    required; the sorted class-folder names are the classes
    PATH/val/<class>/<image files>      optional; any subset of train's classes
    PATH/test/<class>/<image files>     optional; any subset of train's classes

Image files may sit in nested folders inside a class folder (all are taken, as ImageFolder
does). Names starting with '.' (files and folders) and files whose extension is not in
IMG_EXTENSIONS are ignored. File order is sorted by relative path, so it does not depend on
the filesystem; labels of val/test are train's class indices, matched by folder name.

Unreadable files, the policy:
  * at scan, every image's header is read (``PIL.Image.open``, no pixel decoding; 8 threads).
    A file PIL cannot identify (garbage bytes, an empty file, a cut header) is SKIPPED and
    listed in ``FolderSplits.skipped`` with the reason; summary_line reports it. If skipping
    leaves a class folder of train with no images, that is an error naming the folder.
  * a file whose header is fine but whose body is not (truncated, corrupt) is only found when
    it is decoded: ImageFiles.__getitem__ raises FolderError naming the file. It is not
    skipped silently then, because the file list (and its fingerprint) is part of the run.

Decoding and augmentation run per image on the CPU (in DataLoader workers), unlike the
in-memory datasets of this package. Every random draw of train_transform comes from torch's
global generator, so seeding torch before an item makes its augmentation reproducible.

torchvision (and Pillow, which it brings) is an optional dependency, imported only when this
module's functions are called: ``pip install torchvision`` or ``pip install 'fastadv[vision]'``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

PREFIX = "folder:"
SPLITS = ("train", "val", "test")
AUGMENTS = ("rrc", "pad-crop", "none")
# torchvision's IMG_EXTENSIONS plus .gif; compared with the lower-cased file name.
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm")
LAYOUT = ("PATH/train/<class>/<image files> (one folder per class), optionally "
          "PATH/val/<class>/... and PATH/test/<class>/...")
NEEDS_VISION = ("--dataset folder:PATH needs torchvision: pip install torchvision "
                "(or pip install 'fastadv[vision]')")
SCAN_THREADS = 8  # header reads are I/O-bound; PIL releases the GIL while reading files
_CHUNK = 256  # files per thread-pool task: few futures even for a million files


class FolderError(ValueError):
    """A problem with the files of a ``folder:PATH`` set; the message names the path and what
    to do about it."""


def require_vision():
    """(torchvision.transforms.v2, PIL.Image), or ImportError saying what to install."""
    try:
        import PIL.Image
        from torchvision.transforms import v2
    except ImportError as error:
        raise ImportError(NEEDS_VISION) from error
    return v2, PIL.Image


def is_folder_name(name) -> bool:
    """Whether ``name`` is ``folder:PATH`` with a non-empty PATH."""
    return isinstance(name, str) and name.startswith(PREFIX) and bool(name[len(PREFIX):].strip())


def folder_path(name: str) -> str:
    """The PATH of ``folder:PATH``, ``~`` expanded, absolute."""
    if not is_folder_name(name):
        raise FolderError(f"--dataset {name!r}: expected folder:PATH with PATH a folder laid "
                          f"out as {LAYOUT}")
    return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


# --------------------------------------------------------------------------- scanning

Items = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class FolderSplits:
    """What scan_folder found under ``root``: classes (sorted class-folder names of train),
    and per split a tuple of (path relative to root with '/' separators, label), sorted by
    path; val/test are None when their folder is absent. ``skipped``: (relative path, reason)
    of the files that were left out as unreadable. ``sizes``: the byte size of every file of
    train, val, test in that order (only for the fingerprint)."""

    root: str
    classes: tuple[str, ...]
    train: Items
    val: Items | None
    test: Items | None
    skipped: tuple[tuple[str, str], ...] = ()
    sizes: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the classes, every split's (relative path, label) and the file sizes:
        it changes when a file is added, removed, renamed, moved to another class or replaced
        by one of another size (contents are not read: cheap for a million files)."""
        h = hashlib.sha256()
        # Separators that cannot occur in names (\0) or in numbers keep the encoding unambiguous.
        h.update(b"classes\0" + "\0".join(self.classes).encode("utf-8", "surrogateescape"))
        for split in SPLITS:
            items = getattr(self, split)
            h.update(f"\1{split}\1{'none' if items is None else len(items)}\1".encode())
            for rel, label in items or ():
                h.update(rel.encode("utf-8", "surrogateescape") + f"\0{label}\n".encode())
        h.update(b"\1sizes\1" + ",".join(map(str, self.sizes)).encode())
        return h.hexdigest()


def _image_files(folder: str, rel_folder: str) -> list[str]:
    """Relative paths ('/'-separated, under rel_folder) of the image files anywhere below
    folder, hidden names skipped, symlinked folders followed once (a link loop is cut)."""
    found, seen = [], set()

    def walk(path: str, rel: str):
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    walk(entry.path, f"{rel}/{entry.name}")
                elif entry.name.lower().endswith(IMG_EXTENSIONS) and entry.is_file():
                    found.append(f"{rel}/{entry.name}")

    walk(folder, rel_folder)
    return found


def _class_folders(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir)
                  if not e.name.startswith(".") and e.is_dir())


def _check_header(path: str, image_module) -> tuple[int, str | None]:
    """(file size, None) when PIL can identify the image from its header, else (size, reason)."""
    try:
        size = os.path.getsize(path)
    except OSError as error:  # vanished or unreadable since the listing
        return 0, _reason(error, path)
    if size == 0:
        return size, "empty file"
    try:
        with image_module.open(path) as im:  # reads the header only
            im.size  # noqa: B018 (touch it: a lazy plugin may parse on first access)
    except image_module.UnidentifiedImageError:
        return size, "cannot identify image file"  # PIL's own message repeats the full path
    except Exception as error:  # noqa: BLE001 (any failure to open means unreadable)
        return size, _reason(error, path)
    return size, None


def _reason(error: Exception, path: str) -> str:
    text = str(error).replace(f"'{path}'", "").replace(path, "").strip(" :")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_chunk(root: str, rels: Sequence[str], image_module) -> list[tuple[int, str | None]]:
    return [_check_header(os.path.join(root, rel), image_module) for rel in rels]


def scan_folder(path: str) -> FolderSplits:
    """Scan ``path`` (layout in the module docstring) -> FolderSplits; FolderError for a
    missing or malformed layout, an empty split, fewer than 2 classes, an empty class folder
    of train, or a val/test class that train lacks. Reads every image's header (see the
    module docstring for what happens to unreadable files)."""
    _, image_module = require_vision()
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    where = f"folder:{root}"
    if not os.path.exists(root):
        raise FolderError(f"{where}: no such folder (expected {LAYOUT})")
    if not os.path.isdir(root):
        raise FolderError(f"{where}: not a folder (expected {LAYOUT})")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        inside = sorted(n for n in os.listdir(root) if not n.startswith("."))[:8]
        raise FolderError(f"{where}: no train/ folder (found: {', '.join(inside) or 'nothing'}); "
                          f"expected {LAYOUT}")

    classes = _class_folders(train_dir)
    if not classes:
        raise FolderError(f"{where}: train/ is empty: it holds no class folders "
                          f"(expected {LAYOUT})")
    per_class = {c: _image_files(os.path.join(train_dir, c), f"train/{c}") for c in classes}
    if not any(per_class.values()):
        raise FolderError(f"{where}: train/ is empty: its class folders hold no image files "
                          f"(extensions {', '.join(IMG_EXTENSIONS)})")
    if len(classes) == 1:
        raise FolderError(f"{where}: train/ has one class folder ({classes[0]}); classification "
                          f"needs at least 2 classes: add a folder per class under train/")
    for c in classes:
        if not per_class[c]:
            raise FolderError(f"{where}: class folder train/{c} holds no image files "
                              f"(extensions {', '.join(IMG_EXTENSIONS)}); add images or remove it")
    index = {c: i for i, c in enumerate(classes)}
    found = {"train": sorted((rel, index[c]) for c, rels in per_class.items() for rel in rels)}

    for split in ("val", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.exists(split_dir):
            found[split] = None
            continue
        if not os.path.isdir(split_dir):
            raise FolderError(f"{where}: {split} is not a folder; {split}/ should hold class "
                              f"folders like train/ (or remove it)")
        items = []
        for c in _class_folders(split_dir):
            if c not in index:
                raise FolderError(f"{where}: {split}/{c} is not a class of train/ (classes: "
                                  f"{', '.join(classes)}); rename or remove it")
            items += [(rel, index[c]) for rel in _image_files(os.path.join(split_dir, c),
                                                             f"{split}/{c}")]
        if not items:
            raise FolderError(f"{where}: {split}/ exists but holds no images (expected "
                              f"{split}/<class>/<image files>); add images or remove it")
        found[split] = sorted(items)

    # Header check of every file, in chunks over a thread pool (order kept by map).
    everything = [rel for s in SPLITS for rel, _ in found[s] or ()]
    chunks = [everything[i:i + _CHUNK] for i in range(0, len(everything), _CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, min(SCAN_THREADS, len(chunks)))) as pool:
        results = [r for chunk in pool.map(lambda ch: _check_chunk(root, ch, image_module), chunks)
                   for r in chunk]
    checked = dict(zip(everything, results))
    skipped = tuple((rel, reason) for rel, (_, reason) in checked.items() if reason is not None)

    kept = {}
    for split in SPLITS:
        if found[split] is None:
            kept[split] = None
            continue
        kept[split] = tuple((rel, y) for rel, y in found[split] if checked[rel][1] is None)
        if split == "train":
            present = {y for _, y in kept[split]}
            for c in classes:
                if index[c] not in present:
                    bad = [f"{rel} ({why})" for rel, why in skipped
                           if rel.startswith(f"train/{c}/")]
                    raise FolderError(f"{where}: class folder train/{c} has no readable images: "
                                      f"all {len(bad)} are unreadable (first: {bad[0]}); "
                                      f"replace or remove them")
        elif not kept[split]:
            raise FolderError(f"{where}: {split}/ holds no readable images (all "
                              f"{len(found[split])} are unreadable, first: "
                              f"{_first_skipped(skipped, split)}); replace them or remove {split}/")
    sizes = tuple(checked[rel][0] for s in SPLITS for rel, _ in kept[s] or ())
    return FolderSplits(root, tuple(classes), kept["train"], kept["val"], kept["test"],
                        skipped, sizes)


def _first_skipped(skipped, split: str) -> str:
    rel, why = next((r, w) for r, w in skipped if r.startswith(f"{split}/"))
    return f"{rel}: {why}"


def summary_line(splits: FolderSplits) -> str:
    """One line for the log, e.g. ``folder /data/pets: 3 classes (cat, dog, fox), 60 training
    images, val 12, test none; skipped 2 unreadable files (first: train/cat/bad.png: cannot
    identify image file)``."""
    names = ", ".join(splits.classes[:6]) + (", ..." if len(splits.classes) > 6 else "")
    count = {s: "none" if getattr(splits, s) is None else len(getattr(splits, s))
             for s in ("val", "test")}
    line = (f"folder {splits.root}: {len(splits.classes)} classes ({names}), "
            f"{len(splits.train)} training images, val {count['val']}, test {count['test']}")
    if splits.skipped:
        n = len(splits.skipped)
        rel, why = splits.skipped[0]
        line += f"; skipped {n} unreadable file{'s' if n > 1 else ''} (first: {rel}: {why})"
    return line


# --------------------------------------------------------------------------- transforms


def default_augment(image_size: int) -> str:
    """"rrc" (random resized crop) for images of 64 pixels and more, where scale changes are
    natural; "pad-crop" (the CIFAR-style shift) for small ones, where a crop of 35% of a
    32-pixel image leaves too little."""
    return "rrc" if image_size >= 64 else "pad-crop"


def to_rgb(image):
    """A PIL image of any mode -> mode RGB (grayscale is repeated, alpha dropped, a palette
    expanded). 16-bit grayscale is scaled to 8 bits (PIL's own conversion would clip it)."""
    if image.mode == "RGB":
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        import numpy as np
        from PIL import Image

        # Mode "I" is how older Pillow opens 16-bit PNGs; 65535 / 257 = 255.
        pixels = np.asarray(image).astype(np.float64) / 257
        image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
    return image.convert("RGB")


class ImageTransform:
    """PIL image -> float32 tensor [3, S, S] in [0, 1]: to_rgb, then a torchvision v2
    pipeline. A plain class (not a lambda) so it pickles into DataLoader workers."""

    def __init__(self, image_size: int, augment: str):
        v2, _ = require_vision()
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r} is not one of {', '.join(AUGMENTS)}")
        s = image_size
        resize = [v2.Resize(s, antialias=True), v2.CenterCrop(s)]  # shorter side to S, centre
        if augment == "rrc":
            steps = [v2.RandomResizedCrop(s, scale=(0.35, 1.0), antialias=True),
                     v2.RandomHorizontalFlip()]
        elif augment == "pad-crop":
            # Shifts of up to S/8 (4 pixels at 32, as for CIFAR-10), zeros filling the border.
            steps = resize + [v2.RandomCrop(s, padding=max(1, s // 8), padding_mode="constant",
                                            fill=0), v2.RandomHorizontalFlip()]
        else:
            steps = resize
        self.image_size, self.augment = s, augment
        # Geometry on the PIL image (Pillow's resize), then one conversion to a float tensor.
        self.pipeline = v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image) -> Tensor:
        return self.pipeline(to_rgb(image))

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, augment={self.augment!r})"


def train_transform(image_size: int, augment: str) -> ImageTransform:
    """The training transform: augment is "rrc" (RandomResizedCrop(S, scale=(0.35, 1)) + flip),
    "pad-crop" (resize + centre crop to S, then a random crop of the image zero-padded by
    max(1, S // 8) + flip) or "none" (eval_transform). Randomness: torch's global generator."""
    return ImageTransform(image_size, augment)


def eval_transform(image_size: int) -> ImageTransform:
    """The evaluation transform: shorter side resized to S, centre crop S x S; no randomness."""
    return ImageTransform(image_size, "none")


# --------------------------------------------------------------------------- dataset


class ImageFiles(torch.utils.data.Dataset):
    """items[i] = (path relative to root, label) -> (transform(image) [3, S, S] float32, label).
    Holds only strings, ints and the transform, so it pickles into DataLoader workers."""

    def __init__(self, root: str, items: Sequence[tuple[str, int]], transform):
        self.root = os.fspath(root)
        self.items = tuple((str(rel), int(y)) for rel, y in items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> Tensor:
        """int64 [N], without decoding anything."""
        return torch.tensor([y for _, y in self.items], dtype=torch.int64)

    def load(self, i: int):
        """The i-th image decoded in full, as a PIL RGB image; FolderError naming the file if
        it cannot be decoded."""
        _, image_module = require_vision()
        path = os.path.join(self.root, self.items[i][0])
        try:
            with image_module.open(path) as im:
                im.load()  # decode all pixels now, so a truncated body fails here
                return to_rgb(im)
        except Exception as error:  # noqa: BLE001 (any decode failure is the file's problem)
            reason = _reason(error, path)
            if isinstance(error, image_module.UnidentifiedImageError):
                reason = "cannot identify image file"
            raise FolderError(f"cannot read image {os.path.abspath(path)}: {reason}; remove it "
                              f"(and start a new run: the file list is part of the run)") from error

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.load(i)
        return self.transform(image), self.items[i][1]
