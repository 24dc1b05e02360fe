"""fastadv.data.folder (``--dataset folder:PATH``): scanning an ImageFolder-style tree of tiny
PNGs written here, the unreadable-file policy (garbage skipped at scan, a truncated body
refused at load), the error messages, the transforms and their seeding, pickling into
DataLoader workers, the fingerprint, and the clear ImportError without torchvision."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastadv.data import folder
from fastadv.data.folder import FolderError, ImageFiles

try:
    import torchvision  # noqa: F401
    from PIL import Image
    HAVE_VISION = True
except ImportError:
    HAVE_VISION = False

needs_vision = pytest.mark.skipif(not HAVE_VISION, reason="torchvision is not installed")
COLOURS = {"cat": (220, 30, 30), "dog": (30, 200, 40), "fox": (40, 60, 230)}


def png(path, colour=(128, 128, 128), size=(28, 20), mode="RGB"):
    """A tiny image file (width 28, height 20) of one colour plus a gradient, so crops differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None]
    pixels = (np.array(colour)[None, None, :] * (0.5 + 0.5 * ramp)).repeat(h, 0)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path)
    return path


def make_tree(root, per_class=8, val=False, test=False):
    """root/train/{cat,dog,fox}/img{i}.png; images 1 and 2 of each class are grayscale and
    RGBA. val/test: 2 images of cat and fox (a subset of the classes)."""
    for c, colour in COLOURS.items():
        for i in range(per_class):
            mode = {1: "L", 2: "RGBA"}.get(i, "RGB")
            png(root / "train" / c / f"img{i}.png", colour, mode=mode)
    for split, wanted in (("val", val), ("test", test)):
        if wanted:
            for c in ("cat", "fox"):
                for i in range(2):
                    png(root / split / c / f"{split}{i}.png", COLOURS[c])
    return root


# ---------------------------------------------------------------- names -----------------------

def test_names():
    assert folder.is_folder_name("folder:/data/x")
    assert not folder.is_folder_name("folder:") and not folder.is_folder_name("folder:  ")
    assert not folder.is_folder_name("cifar10") and not folder.is_folder_name(None)
    assert folder.folder_path("folder:~/pets") == os.path.join(os.path.expanduser("~"), "pets")
    assert os.path.isabs(folder.folder_path("folder:rel/dir"))
    with pytest.raises(FolderError, match="folder:PATH"):
        folder.folder_path("folder:")
    assert folder.default_augment(64) == "rrc" and folder.default_augment(32) == "pad-crop"


# ---------------------------------------------------------------- scanning --------------------

@needs_vision
def test_scan_order_labels_classes(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "dog" / "nested" / "deeper").mkdir(parents=True)
    png(tmp_path / "train" / "dog" / "nested" / "deeper" / "a.PNG", COLOURS["dog"])
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "train" / ".cache").mkdir()
    png(tmp_path / "train" / ".cache" / "x.png")
    s = folder.scan_folder(str(tmp_path))
    assert s.root == str(tmp_path) and s.classes == ("cat", "dog", "fox")
    assert s.val is None and s.test is None and s.skipped == ()
    assert len(s.train) == 25 and [rel for rel, _ in s.train] == sorted(rel for rel, _ in s.train)
    assert s.train[0] == ("train/cat/img0.png", 0)
    assert ("train/dog/nested/deeper/a.PNG", 1) in s.train
    assert {rel.split("/")[1]: y for rel, y in s.train} == {"cat": 0, "dog": 1, "fox": 2}
    assert "3 classes (cat, dog, fox), 25 training images, val none, test none" in \
        folder.summary_line(s)


@needs_vision
def test_val_test_labels_by_name(tmp_path):
    make_tree(tmp_path, val=True, test=True)
    s = folder.scan_folder(str(tmp_path))
    assert s.val == (("val/cat/val0.png", 0), ("val/cat/val1.png", 0),
                     ("val/fox/val0.png", 2), ("val/fox/val1.png", 2))
    assert [y for _, y in s.test] == [0, 0, 2, 2]
    assert "val 4, test 4" in folder.summary_line(s)
    x, y = ImageFiles(s.root, s.val, folder.eval_transform(16))[3]
    assert y == 2 and x[2].mean() > x[0].mean()  # a blue fox


@needs_vision
def test_garbage_file_skipped_rest_loads(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "cat" / "bad.png").write_bytes(b"this is not a png at all")
    (tmp_path / "train" / "dog" / "empty.jpg").write_bytes(b"")
    s = folder.scan_folder(str(tmp_path))
    assert dict(s.skipped) == {"train/cat/bad.png": "cannot identify image file",
                               "train/dog/empty.jpg": "empty file"}
    assert len(s.train) == 24 and all("bad" not in rel for rel, _ in s.train)
    line = folder.summary_line(s)
    assert ("skipped 2 unreadable files (first: train/cat/bad.png: cannot identify image file)"
            in line)
    ds = ImageFiles(s.root, s.train, folder.eval_transform(12))
    assert all(ds[i][0].shape == (3, 12, 12) for i in range(len(ds)))


@needs_vision
@pytest.mark.parametrize("case, match", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("no-train", r"no train/ folder.*PATH/train/<class>/<image files>"),
    ("no-classes", "train/ is empty"),
    ("no-images", "train/ is empty"),
    ("one-class", "needs at least 2 classes"),
    ("class-empty", "train/dog holds no image files"),
    ("class-garbage", r"train/dog has no readable images.*train/dog/a.png \(cannot identify"),
    ("val-unknown", r"val/wolf is not a class of train/ \(classes: cat, dog, fox\)"),
    ("val-empty", "val/ exists but holds no images"),
    ("test-garbage", "test/ holds no readable images"),
])
def test_scan_errors(tmp_path, case, match):
    root = tmp_path / "set"
    if case == "file":
        root.write_text("x")
    elif case != "missing":
        root.mkdir()
    if case == "no-train":
        png(root / "training" / "cat" / "a.png")
    if case == "no-classes":
        png(root / "train" / "loose.png")  # images but no class folder
    if case == "no-images":
        (root / "train" / "cat").mkdir(parents=True)
        (root / "train" / "dog").mkdir()
    if case == "one-class":
        png(root / "train" / "cat" / "a.png")
    if case in ("class-empty", "class-garbage"):
        png(root / "train" / "cat" / "a.png")
        (root / "train" / "dog").mkdir()
        if case == "class-garbage":
            (root / "train" / "dog" / "a.png").write_bytes(b"garbage")
            (root / "train" / "dog" / "b.jpg").write_bytes(b"more garbage")
    if case.startswith(("val", "test")):
        make_tree(root, per_class=2)
    if case == "val-unknown":
        png(root / "val" / "wolf" / "a.png")
    if case == "val-empty":
        (root / "val" / "cat").mkdir(parents=True)
    if case == "test-garbage":
        (root / "test" / "cat").mkdir(parents=True)
        (root / "test" / "cat" / "a.png").write_bytes(b"garbage")
    with pytest.raises(FolderError, match=match) as info:
        folder.scan_folder(str(root))
    assert str(root) in str(info.value)


@needs_vision
def test_truncated_body_passes_scan_then_names_the_file(tmp_path):
    make_tree(tmp_path, per_class=2)
    good = png(tmp_path / "train" / "cat" / "cut.png", size=(64, 64))
    data = good.read_bytes()
    good.write_bytes(data[:len(data) // 2])  # header intact, pixel data cut
    s = folder.scan_folder(str(tmp_path))
    assert s.skipped == () and ("train/cat/cut.png", 0) in s.train
    ds = ImageFiles(s.root, s.train, folder.eval_transform(8))
    i = s.train.index(("train/cat/cut.png", 0))
    with pytest.raises(FolderError, match=r"cannot read image .*cut\.png: .*remove it") as info:
        ds[i]
    assert str(tmp_path / "train" / "cat" / "cut.png") in str(info.value)
    assert all(ds[j][1] == y for j, (_, y) in enumerate(s.train) if j != i)  # the rest load


@needs_vision
def test_fingerprint_tracks_file_list(tmp_path):
    make_tree(tmp_path, per_class=2, val=True)
    first = folder.scan_folder(str(tmp_path)).fingerprint
    assert folder.scan_folder(str(tmp_path)).fingerprint == first and len(first) == 64
    png(tmp_path / "train" / "cat" / "new.png")
    added = folder.scan_folder(str(tmp_path)).fingerprint
    os.rename(tmp_path / "train" / "cat" / "new.png", tmp_path / "train" / "cat" / "renamed.png")
    renamed = folder.scan_folder(str(tmp_path)).fingerprint
    os.rename(tmp_path / "train" / "cat" / "renamed.png",
              tmp_path / "train" / "dog" / "renamed.png")
    moved = folder.scan_folder(str(tmp_path)).fingerprint
    png(tmp_path / "train" / "dog" / "renamed.png", size=(40, 30))  # replaced, another size
    resized = folder.scan_folder(str(tmp_path)).fingerprint
    assert len({first, added, renamed, moved, resized}) == 5


# ---------------------------------------------------------------- transforms ------------------

@needs_vision
@pytest.mark.parametrize("size, augment", [(24, "pad-crop"), (24, "rrc"), (24, "none"),
                                           (64, "rrc"), (64, "pad-crop")])
def test_transform_shape_range(size, augment):
    for mode in ("RGB", "L", "RGBA", "P", "LA"):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), np.uint8))
        x = folder.train_transform(size, augment)(image.convert(mode))
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
    assert folder.eval_transform(size)(image).shape == (3, size, size)


@needs_vision
def test_sixteen_bit_grayscale_scaled_not_clipped():
    image = Image.fromarray(np.full((8, 8), 32768, np.uint16))  # half of 16-bit full scale
    x = folder.eval_transform(8)(image)
    assert torch.allclose(x, torch.full_like(x, 128 / 255))


@needs_vision
@pytest.mark.parametrize("augment", ["pad-crop", "rrc"])
def test_augment_follows_torch_seed(augment):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), np.uint8))
    t = folder.train_transform(32, augment)

    def draw(seed):
        torch.manual_seed(seed)
        return t(image)

    assert torch.equal(draw(3), draw(3))
    assert not all(torch.equal(draw(3), draw(s)) for s in range(4, 8))
    e = folder.eval_transform(32)
    assert torch.equal(e(image), e(image))


@needs_vision
def test_bad_augment_and_size():
    with pytest.raises(ValueError, match="augment='flip'"):
        folder.train_transform(32, "flip")
    with pytest.raises(ValueError, match="image_size"):
        folder.eval_transform(0)


# ---------------------------------------------------------------- dataset ---------------------

@needs_vision
def test_image_files_pickles_and_loads_in_workers(tmp_path):
    make_tree(tmp_path, per_class=4)
    s = folder.scan_folder(str(tmp_path))
    ds = ImageFiles(s.root, s.train, folder.train_transform(16, "pad-crop"))
    assert torch.equal(ds.labels, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    clone = pickle.loads(pickle.dumps(ds))
    torch.manual_seed(0)
    a = clone[5][0]
    torch.manual_seed(0)
    assert torch.equal(a, ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    xs, ys = zip(*loader)
    assert torch.cat(xs).shape == (12, 3, 16, 16) and torch.equal(torch.cat(ys), ds.labels)


# ---------------------------------------------------------------- no torchvision --------------

def test_clear_import_error_without_torchvision(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for call in (lambda: folder.train_transform(32, "rrc"), lambda: folder.eval_transform(32),
                 lambda: folder.scan_folder(str(tmp_path))):
        with pytest.raises(ImportError, match=r"folder:PATH needs torchvision: pip install"):
            call()


def test_module_imports_without_torchvision():
    code = ("import sys; sys.modules['torchvision'] = None; "
            "import fastadv.data.folder as f; assert f.is_folder_name('folder:x')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
