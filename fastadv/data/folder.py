"""Image sets of one's own in an ImageFolder-style layout (``--dataset folder:PATH``):

    PATH/train/<class>/<image files>    required; the sorted class-folder names are the classes
    PATH/val/<class>/<image files>      optional; any subset of train's classes
    PATH/test/<class>/<image files>     optional; any subset of train's classes

Image files may sit in nested folders inside a class folder (all are taken, as ImageFolder
does). Names starting with '.' (files and folders) and files whose extension is not in
IMG_EXTENSIONS are ignored. File order is sorted by relative path, so it does not depend on
the filesystem; labels of val/test are train's class indices, matched by folder name.

Symlinks, the policy (an image is listed once, under the class folder that holds it):
  * a class folder, or train/, val/, test/ themselves, may be a link to anywhere.
  * a link to a FOLDER inside a class folder is followed only when it resolves to a folder
    inside that class folder's resolved path; one that resolves outside it (another class,
    another split, the set's root, elsewhere on disk) is refused with a FolderError naming
    the link and its target: followed, it would list images under the wrong class or twice.
  * a link that leads back to a folder holding it (``train/a/up -> ..``) or that never
    resolves (a -> b -> a) is a symlink loop: FolderError naming the link.
  * a link to a FILE is followed wherever it points (a set assembled from links to a pool
    of images); a broken one is skipped, like an unreadable file, "broken symlink".
  * duplicates: the same resolved file reached twice (through a file link, a folder link
    or two class folders linking one folder), in one class, two classes or two splits, is
    refused with a FolderError naming both paths: never counted twice, never given two
    labels, never in both train and test. (Copies and hard links are not detected.)
A FolderError is bad input: ``python -m fastadv.train`` reports it in one line, exit 2.

Decoding, the policy: the image's EXIF orientation is applied (``ImageOps.exif_transpose``,
as torchvision's ``decode_image(apply_exif_orientation=True)``), so a photo tagged "rotated"
is seen upright. Then each Pillow mode becomes [0, 1] values by the one table DECODE (mode
-> rule): the 8-bit modes by Pillow's own conversion to RGB, 16-bit grey / 65535 at full
precision, mode I (32-bit integer) and mode F (32-bit float) by a rule on their values,
refusing what does not fit it with the mode named; a mode not in DECODE is refused.

Unreadable files, the policy:
  * at scan, every image's header is read (``PIL.Image.open``, no pixel decoding; 8 threads).
    A file PIL cannot identify (garbage bytes, an empty file, a cut header) is SKIPPED and
    listed in ``FolderSplits.skipped`` with the reason; summary_line reports it. If skipping
    leaves a class folder of train with no images, that is an error naming the folder.
    A file whose mode DECODE refuses (known from the header) is skipped the same way.
  * a file whose header is fine but whose body is not (truncated, corrupt), or whose values
    its mode's rule refuses, is only found when it is decoded: ImageFiles.__getitem__ raises
    FolderError naming the file. It is not skipped silently then, because the file list (and
    its fingerprint) is part of the run. Raised in a DataLoader worker, the error reaches
    the main process with the same one-line message (see FolderError).

Decoding and augmentation run per image on the CPU (in DataLoader workers), unlike the
in-memory datasets of this package. Every random draw of train_transform comes from torch's
global generator, so seeding torch before an item makes its augmentation reproducible.

torchvision (and Pillow, which it brings) is an optional dependency, imported only when this
module's functions are called: ``pip install torchvision`` or ``pip install 'fastadv[vision]'``.
"""

from __future__ import annotations

import errno
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
    """A problem with the files of a ``folder:PATH`` set; the message (one line) names the
    path and what to do about it.

    Raised in a DataLoader worker, it is re-raised in the main process by torch as
    ``FolderError(text)`` with ``text`` the worker's whole traceback ("Caught FolderError in
    DataLoader worker process 0. Original Traceback ..."): the original one-line message is
    recovered from its last line, so an image that fails in a worker reads as it does
    without workers. The worker's traceback is kept as ``worker_traceback`` (and as a note,
    shown when the error is not caught)."""

    worker_traceback: str | None = None

    def __init__(self, *args):
        text = args[0] if len(args) == 1 and isinstance(args[0], str) else None
        original = None if text is None else _worker_message(text, type(self))
        if original is None:
            super().__init__(*args)
            return
        super().__init__(original)
        self.worker_traceback = text
        if hasattr(self, "add_note"):  # Python 3.11+
            self.add_note(text.rstrip("\n"))


def _worker_message(text: str, cls: type) -> str | None:
    """The message of a ``cls`` raised in a DataLoader worker, out of the text torch re-raises
    it with (torch.utils.data._utils.ExceptionWrapper.reraise); None for any other text."""
    head, _, rest = text.partition("\n")
    if not (head.startswith(f"Caught {cls.__name__} ") and "DataLoader worker" in head):
        return None
    name = f"{cls.__module__}.{cls.__qualname__}: "
    lines = rest.rstrip("\n").split("\n")
    return lines[-1][len(name):] if lines[-1].startswith(name) else None


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


class _Lister:
    """Lists the image files of class folders (see "Symlinks" in the module docstring): one
    per scan, shared by every split, so that a file or folder reached twice is caught across
    classes and splits alike."""

    def __init__(self, root: str, where: str):
        self.root, self.where = os.path.realpath(root), where
        self.files: dict[str, str] = {}  # resolved image file -> the relative path listing it
        self.done: dict[str, tuple[str, str | None]] = {}  # resolved folder walked -> (its
        #   relative path, the first image listed under it or None)
        self.open: dict[str, str] = {}  # resolved folders being walked -> relative path
        self.listed: list[str] = []  # every relative path listed so far, in walk order

    def class_folder(self, path: str, rel: str) -> list[str]:
        """Relative paths ('/'-separated, under rel) of the image files below the class
        folder ``path``; FolderError for a link loop, a folder link leaving the class folder
        or a file listed twice."""
        top = os.path.realpath(path)
        start = len(self.listed)
        self._walk(path, rel, top, top, rel)
        return self.listed[start:]

    def _name(self, real: str) -> str:
        """A resolved path as the user knows it: relative to the set's root when inside it."""
        if _inside(real, self.root):
            return os.path.relpath(real, self.root).replace(os.sep, "/") + "/"
        return real

    def _walk(self, path: str, rel: str, real: str, top: str, top_rel: str) -> None:
        if real in self.done:  # the same folder reached a second time (through a link)
            first_rel, first_image = self.done[real]
            if first_image is not None:
                raise self._twice(first_image, rel + first_image[len(first_rel):])
            return
        self.open[real] = rel
        start = len(self.listed)
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as error:
            raise _listing_error(self.where, error, rel) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            sub = f"{rel}/{entry.name}"
            try:
                link, folder = entry.is_symlink(), entry.is_dir()
            except OSError as error:  # ELOOP: a link that resolves to itself, a -> b -> a
                raise _listing_error(self.where, error, sub) from None
            if folder and not link:
                self._walk(entry.path, sub, os.path.join(real, entry.name), top, top_rel)
            elif folder:
                target = os.path.realpath(entry.path)
                if target in self.open or _inside(real, target):
                    raise FolderError(
                        f"{self.where}: symlink loop: {sub} -> {os.readlink(entry.path)} leads "
                        f"back to {self._name(target)}, a folder that holds the link; remove "
                        f"the link")
                if not _inside(target, top):
                    raise FolderError(
                        f"{self.where}: {sub} is a symlink to the folder {self._name(target)}, "
                        f"outside its class folder {top_rel}/ (links to folders are followed "
                        f"only inside their class folder, so that no image is listed twice or "
                        f"under another class); move or link the image files themselves into "
                        f"{top_rel}/, or make {top_rel} itself the link")
                self._walk(entry.path, sub, target, top, top_rel)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                # A link to a file is followed wherever it points; a broken one is listed
                # and skipped at the header check, with the reason.
                if link and not os.path.exists(entry.path):
                    self.listed.append(sub)
                    continue
                resolved = os.path.realpath(entry.path) if link else os.path.join(
                    real, entry.name)
                if not (link or entry.is_file()):
                    continue  # a fifo, socket or device named like an image
                if resolved in self.files:
                    raise self._twice(self.files[resolved], sub)
                self.files[resolved] = sub
                self.listed.append(sub)
        del self.open[real]
        self.done[real] = (rel, self.listed[start] if len(self.listed) > start else None)

    def _twice(self, first: str, second: str) -> FolderError:
        return FolderError(f"{self.where}: {first} and {second} are the same file (through a "
                           f"symlink): an image may be listed once only (twice in one class "
                           f"counts it double, in two classes or splits it contradicts itself); "
                           f"remove one of them")


def _listing_error(where: str, error: OSError, rel: str) -> FolderError:
    """The FolderError for an OSError met while listing ``rel`` (bad input, not a failed
    write: the CLI exits with status 2)."""
    if error.errno == errno.ELOOP:
        return FolderError(f"{where}: symlink loop: {rel} does not resolve (too many levels "
                           f"of symbolic links); remove or fix the link")
    if error.errno == errno.ENOENT and os.path.islink(error.filename or ""):
        return FolderError(f"{where}: {rel} is a broken symlink (to "
                           f"{os.readlink(error.filename)}); fix or remove it")
    return FolderError(f"{where}: cannot list {rel}: {_reason(error, error.filename or '')}")


def _inside(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or lies below it."""
    return os.path.commonpath([path, folder]) == folder


def _class_folders(split_dir: str, split: str, where: str) -> list[str]:
    names = []
    try:
        with os.scandir(split_dir) as listing:
            entries = list(listing)
    except OSError as error:
        raise _listing_error(where, error, split) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                names.append(entry.name)
            elif entry.is_symlink():  # broken: a class must not vanish silently
                os.stat(entry.path)
        except OSError as error:  # a class-folder link that loops or is broken
            raise _listing_error(where, error, f"{split}/{entry.name}") from None
    return sorted(names)


def _split_folder(root: str, split: str, where: str) -> str | None:
    """root/split when it is a folder, None when there is no such name; FolderError for a
    broken or looping link of that name (a split must not vanish silently)."""
    path = os.path.join(root, split)
    if not os.path.lexists(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        raise _listing_error(where, error, split) from None
    return path


def _check_header(path: str, image_module) -> tuple[int, str | None]:
    """(file size, None) when PIL can identify the image from its header and DECODE takes its
    mode, else (size, reason)."""
    try:
        size = os.path.getsize(path)
    except OSError as error:  # vanished or unreadable since the listing, or a broken link
        if os.path.islink(path) and not os.path.exists(path):
            return 0, f"broken symlink (to {os.readlink(path)})"
        return 0, _reason(error, path)
    if size == 0:
        return size, "empty file"
    try:
        with image_module.open(path) as im:  # reads the header only
            im.size  # noqa: B018 (touch it: a lazy plugin may parse on first access)
            mode = im.mode
    except image_module.UnidentifiedImageError:
        return size, "cannot identify image file"  # PIL's own message repeats the full path
    except Exception as error:  # noqa: BLE001 (any failure to open means unreadable)
        return size, _reason(error, path)
    return size, refusal(mode)  # a mode DECODE refuses is as unreadable


def _reason(error: Exception, path: str) -> str:
    text = str(error).replace(f"'{path}'", "").replace(path, "").strip(" :")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_chunk(root: str, rels: Sequence[str], image_module) -> list[tuple[int, str | None]]:
    return [_check_header(os.path.join(root, rel), image_module) for rel in rels]


def scan_folder(path: str) -> FolderSplits:
    """Scan ``path`` (layout in the module docstring) -> FolderSplits; FolderError for a
    missing or malformed layout, an empty split, fewer than 2 classes, an empty class folder
    of train, a val/test class that train lacks, a symlink loop, a folder link leaving its
    class folder, or a file listed twice (see "Symlinks" in the module docstring). Reads
    every image's header (see the module docstring for what happens to unreadable files)."""
    _, image_module = require_vision()
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    where = f"folder:{root}"
    if not os.path.lexists(root):
        raise FolderError(f"{where}: no such folder (expected {LAYOUT})")
    try:
        os.stat(root)
    except OSError as error:  # a broken or looping link
        raise _listing_error(where, error, root) from None
    if not os.path.isdir(root):
        raise FolderError(f"{where}: not a folder (expected {LAYOUT})")
    train_dir = _split_folder(root, "train", where)
    if train_dir is None or not os.path.isdir(train_dir):
        inside = sorted(n for n in os.listdir(root) if not n.startswith("."))[:8]
        raise FolderError(f"{where}: no train/ folder (found: {', '.join(inside) or 'nothing'}); "
                          f"expected {LAYOUT}")

    classes = _class_folders(train_dir, "train", where)
    if not classes:
        raise FolderError(f"{where}: train/ is empty: it holds no class folders "
                          f"(expected {LAYOUT})")
    lister = _Lister(root, where)
    per_class = {c: lister.class_folder(os.path.join(train_dir, c), f"train/{c}")
                 for c in classes}
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
        split_dir = _split_folder(root, split, where)
        if split_dir is None:
            found[split] = None
            continue
        if not os.path.isdir(split_dir):
            raise FolderError(f"{where}: {split} is not a folder; {split}/ should hold class "
                              f"folders like train/ (or remove it)")
        items = []
        for c in _class_folders(split_dir, split, where):
            if c not in index:
                raise FolderError(f"{where}: {split}/{c} is not a class of train/ (classes: "
                                  f"{', '.join(classes)}); rename or remove it")
            items += [(rel, index[c]) for rel in lister.class_folder(os.path.join(split_dir, c),
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


# How each Pillow mode becomes the float [3, H, W] in [0, 1] the model sees: the whole rule.
#   "rgb":     Pillow's own convert("RGB"), then /255 (8 bits a channel; grey repeated);
#   "via-LA":  convert("LA") first (Pillow un-premultiplies the alpha), then as "rgb";
#   "via-RGBA": convert("RGBA") first (a palette's transparency kept apart), then as "rgb";
#   "uint16":  value / 65535, kept at full precision (not rounded to 8 bits);
#   "int32":   the rule for mode I in _int32_scale;
#   "float":   taken as is when every value is finite and in [0, 1], else refused;
#   "refuse":  the image is refused, the mode named.
# Alpha is dropped (the stored colour is kept, not composited over a background), and no
# embedded ICC profile is applied. A mode not in the table (a newer Pillow's) is refused.
DECODE: dict[str, tuple[str, str]] = {
    "1": ("rgb", "bilevel: 0 -> 0, 1 -> 1, repeated to 3 channels"),
    "L": ("rgb", "8-bit grey / 255, repeated to 3 channels"),
    "LA": ("rgb", "8-bit grey / 255, repeated; alpha dropped"),
    "La": ("via-LA", "grey premultiplied by alpha: un-premultiplied, then as LA"),
    "P": ("rgb", "the palette's colours / 255 (with transparency: via RGBA, alpha dropped)"),
    "PA": ("via-RGBA", "the palette's colours / 255; alpha dropped"),
    "RGB": ("rgb", "/ 255"),
    "RGBA": ("rgb", "/ 255; alpha dropped"),
    "RGBa": ("rgb", "premultiplied by alpha: un-premultiplied by Pillow; alpha dropped"),
    "RGBX": ("rgb", "/ 255; the padding channel dropped"),
    "CMYK": ("rgb", "Pillow's CMYK -> RGB (no ICC profile applied)"),
    "YCbCr": ("rgb", "Pillow's YCbCr -> RGB (JPEG's full-range BT.601)"),
    "LAB": ("rgb", "Pillow's CIELab -> sRGB (refused where a Pillow cannot convert it)"),
    "HSV": ("rgb", "Pillow's HSV -> RGB"),
    "I;16": ("uint16", "16-bit grey / 65535, full precision, repeated"),
    "I;16L": ("uint16", "16-bit grey / 65535, full precision, repeated"),
    "I;16B": ("uint16", "16-bit grey / 65535, full precision, repeated"),
    "I;16N": ("uint16", "16-bit grey / 65535, full precision, repeated"),
    "I": ("int32", "32-bit integer grey, no full scale of its own: from PNG or PPM/PGM (16 "
                   "bits at most) / 65535; otherwise all values in 0..255 -> / 255, all in "
                   "0..65535 -> / 65535, a negative value or one above 65535 -> refused"),
    "F": ("float", "32-bit float grey, taken as is; refused unless every value is finite and "
                   "in [0, 1]"),
    "BGR;15": ("refuse", "packed BGR (Pillow < 12 only); save the image as RGB"),
    "BGR;16": ("refuse", "packed BGR (Pillow < 12 only); save the image as RGB"),
    "BGR;24": ("refuse", "packed BGR (Pillow < 12 only); save the image as RGB"),
}
_SIXTEEN_BIT_FORMATS = ("PNG", "PPM")  # their mode I holds samples of 16 bits at most


def refusal(mode: str) -> str | None:
    """Why an image of Pillow mode ``mode`` is refused whatever its pixels, or None when its
    mode decodes (modes "I" and "F" may still be refused for their values)."""
    how, what = DECODE.get(mode, ("refuse", None))
    if how != "refuse":
        return None
    if what is None:
        return (f"Pillow mode {mode} is not one this loader decodes (it decodes "
                f"{', '.join(m for m, (h, _) in DECODE.items() if h != 'refuse')}); save the "
                f"image as RGB")
    return f"Pillow mode {mode} is not decoded: {what}"


def decode(image, image_format: str | None = None):
    """A PIL image of any mode -> what ImageTransform's pipeline takes: a PIL RGB image for
    the 8-bit modes, a float32 ``tv_tensors.Image`` [3, H, W] in [0, 1] for the modes of
    more bits ("I;16*", "I", "F"), so that they keep their precision. The rule per mode is
    DECODE; FolderError naming the mode for a refused one. ``image_format`` (Pillow's
    ``image.format``, e.g. "PNG"; by default the image's own) settles mode I's scale.
    An RGB image or a tensor is returned as it is."""
    if isinstance(image, Tensor):
        return image
    mode = image.mode
    why = refusal(mode)
    if why is not None:
        raise FolderError(why)
    how = DECODE[mode][0]
    if how == "rgb" or how.startswith("via-"):
        if mode == "RGB":
            return image
        if how.startswith("via-"):
            image = image.convert(how[len("via-"):])
        elif mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
        return image.convert("RGB")

    import numpy as np
    from torchvision import tv_tensors

    pixels = np.asarray(image)
    if how == "uint16":
        values = pixels.astype(np.float64) / 65535
    elif how == "int32":
        fmt = image_format if image_format is not None else getattr(image, "format", None)
        values = pixels.astype(np.float64) / _int32_scale(pixels, fmt)
    else:  # "float"
        values = pixels.astype(np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0
                                and values.max() <= 1):
            finite = values[np.isfinite(values)]
            found = (f"values in [{finite.min():.6g}, {finite.max():.6g}]" if finite.size
                     else "no finite value")
            if finite.size < values.size:
                found += f" and {values.size - finite.size} NaN or infinite"
            raise FolderError(f"Pillow mode F (32-bit float) must hold values in [0, 1]; this "
                              f"image has {found}; save it scaled to [0, 1] or as 8/16-bit")
    grey = torch.from_numpy(values.astype(np.float32))
    return tv_tensors.Image(grey.unsqueeze(0).repeat(3, 1, 1))


def _int32_scale(pixels, image_format: str | None) -> int:
    """Mode I's full scale (see DECODE["I"]): 65535 for a format of 16 bits at most, else
    255 or 65535 by the range of the values; FolderError for a range that fits neither."""
    if image_format in _SIXTEEN_BIT_FORMATS:
        low, high = 0, 65535
        if pixels.size and (pixels.min() < low or pixels.max() > high):
            raise FolderError(f"Pillow mode I from {image_format} holds values outside "
                              f"0..65535 ([{pixels.min()}, {pixels.max()}])")
        return high
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > 65535:
        raise FolderError(f"Pillow mode I (32-bit integer) holds values in [{low}, {high}]: "
                          f"it is decoded only with values in 0..255 (8-bit, / 255) or "
                          f"0..65535 (16-bit, / 65535); save it as 8 or 16-bit, or scaled to "
                          f"[0, 1] as float")
    return 255 if high <= 255 else 65535


class ImageTransform:
    """PIL image (any mode DECODE takes) -> float32 tensor [3, S, S] in [0, 1]: decode, then
    a torchvision v2 pipeline (on the PIL image for 8-bit modes, on a float tensor for the
    others). A plain class (not a lambda) so it pickles into DataLoader workers."""

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
        # Geometry on the PIL image (Pillow's resize), then one conversion to a float tensor
        # (a float tensor from decode passes ToImage and ToDtype unchanged).
        self.pipeline = v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image) -> Tensor:
        return self.pipeline(decode(image))

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
        """The i-th image decoded in full, turned upright by its EXIF orientation and
        converted by ``decode`` (a PIL RGB image, or a float tensor for modes of more than 8
        bits); FolderError naming the file if it cannot be decoded or is refused."""
        _, image_module = require_vision()
        from PIL import ImageOps

        path = os.path.join(self.root, self.items[i][0])
        try:
            with image_module.open(path) as im:
                im.load()  # decode all pixels now, so a truncated body fails here
                upright = ImageOps.exif_transpose(im)  # a copy, turned when the tag says so
                return decode(upright, im.format)
        except Exception as error:  # noqa: BLE001 (any decode failure is the file's problem)
            if isinstance(error, FolderError):
                reason = str(error)
            elif isinstance(error, image_module.UnidentifiedImageError):
                reason = "cannot identify image file"
            else:
                reason = _reason(error, path)
            raise FolderError(f"cannot read image {os.path.abspath(path)}: {reason}; replace or "
                              f"remove it (and start a new run: the file list is part of the "
                              f"run)") from error

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.load(i)
        return self.transform(image), self.items[i][1]
