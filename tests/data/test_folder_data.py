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
    assert torch.allclose(x, torch.full_like(x, 32768 / 65535))  # full precision, not 128/255


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


# ---------------------------------------------------------------- symlinks --------------------

def two_classes(root, per_class=24):
    for c in ("a", "b"):
        for i in range(per_class):
            png(root / "train" / c / f"{i:02d}.png", size=(6, 4))
    return root


@needs_vision
def test_link_to_an_ancestor_is_a_loop_not_a_second_class(tmp_path):
    """train/a/up -> .. used to list b's 24 images again under label a (72 instead of 48)."""
    two_classes(tmp_path)
    assert len(folder.scan_folder(str(tmp_path)).train) == 48
    os.symlink("..", tmp_path / "train" / "a" / "up")
    with pytest.raises(FolderError, match=r"symlink loop: train/a/up -> \.\. leads back to "
                                          r"train/") as info:
        folder.scan_folder(str(tmp_path))
    assert str(tmp_path) in str(info.value)


@needs_vision
@pytest.mark.parametrize("link, target, match", [
    ("a/l1", "l2", r"symlink loop: train/a/l1 does not resolve"),  # l1 -> l2 -> l1
    ("a/self.png", "self.png", r"symlink loop: train/a/self\.png does not resolve"),
    ("a/deep/er/up", "../..", r"symlink loop: train/a/deep/er/up -> \.\./\.\. leads back to "
                              r"train/a/"),
    ("a/here", ".", r"symlink loop: train/a/here -> \. leads back to train/a/"),
    ("c", "c", r"symlink loop: train/c does not resolve"),  # a class folder that loops
])
def test_symlink_loops_are_folder_errors_naming_the_link(tmp_path, link, target, match):
    two_classes(tmp_path, per_class=2)
    (tmp_path / "train" / "a" / "deep" / "er").mkdir(parents=True)
    os.symlink(target, tmp_path / "train" / link)
    if link == "a/l1":
        os.symlink("l1", tmp_path / "train" / "a" / "l2")
    with pytest.raises(FolderError, match=match):  # not an OSError (exit 1, "a write failed")
        folder.scan_folder(str(tmp_path))


@needs_vision
def test_symlink_loop_exits_2_from_the_cli(tmp_path):
    two_classes(tmp_path / "set", per_class=2)
    os.symlink("l2", tmp_path / "set" / "train" / "a" / "l1")
    os.symlink("l1", tmp_path / "set" / "train" / "a" / "l2")
    result = subprocess.run(
        [sys.executable, "-m", "fastadv.train", "--dataset", f"folder:{tmp_path / 'set'}",
         "--model", "small-cnn", "--epochs", "1", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "symlink loop: train/a/l1" in result.stderr
    assert not (tmp_path / "run").exists()


@needs_vision
def test_folder_links_outside_the_class_folder_are_refused(tmp_path):
    root = two_classes(tmp_path / "set", per_class=2)
    elsewhere = two_classes(tmp_path / "other", per_class=2)
    for name, target in (("to-b", root / "train" / "b"), ("to-test", root / "test"),
                         ("away", elsewhere / "train" / "a")):
        png(root / "test" / "a" / "t.png")
        link = root / "train" / "a" / name
        os.symlink(target, link)
        with pytest.raises(FolderError, match=rf"train/a/{name} is a symlink to the folder "
                                              rf".*outside its class folder train/a/"):
            folder.scan_folder(str(root))
        os.remove(link)


@needs_vision
def test_folder_links_inside_the_class_folder_are_followed(tmp_path):
    two_classes(tmp_path, per_class=2)
    store = tmp_path / "train" / "a" / ".store"
    png(store / "kept.png")
    os.symlink(".store", tmp_path / "train" / "a" / "view")  # hidden itself: listed once
    s = folder.scan_folder(str(tmp_path))
    assert ("train/a/view/kept.png", 0) in s.train and len(s.train) == 5


@needs_vision
@pytest.mark.parametrize("link, target, first, second", [
    ("train/a/alias", "sub", "train/a/alias/s.png", "train/a/sub/s.png"),  # same class
    ("train/a/x.png", "../b/00.png", "train/a/x.png", "train/b/00.png"),  # another class
    ("train/c", "a", "train/a/00.png", "train/c/00.png"),  # two class folders, one folder
    ("val", "train", "train/a/00.png", "val/a/00.png"),  # a split that is another one
    ("test/b/t.png", "../../train/b/01.png", "train/b/01.png", "test/b/t.png"),
])
def test_the_same_file_twice_is_refused_naming_both(tmp_path, link, target, first, second):
    two_classes(tmp_path, per_class=2)
    png(tmp_path / "train" / "a" / "sub" / "s.png")
    (tmp_path / "test" / "b").mkdir(parents=True)
    png(tmp_path / "test" / "a" / "t.png")
    os.symlink(target, tmp_path / link)
    with pytest.raises(FolderError, match=rf"{first} and {second} are the same file"):
        folder.scan_folder(str(tmp_path))


@needs_vision
def test_file_links_are_followed_and_broken_ones_skipped(tmp_path):
    pool = tmp_path / "pool"
    png(pool / "p.png", COLOURS["fox"])
    root = two_classes(tmp_path / "set", per_class=2)
    os.symlink(pool / "p.png", root / "train" / "b" / "p.png")
    os.symlink(pool / "gone.png", root / "train" / "b" / "gone.png")
    s = folder.scan_folder(str(root))
    assert ("train/b/p.png", 1) in s.train and len(s.train) == 5
    assert s.skipped == (("train/b/gone.png", f"broken symlink (to {pool / 'gone.png'})"),)
    os.symlink(tmp_path / "nowhere", root / "val")  # a split must not vanish silently
    with pytest.raises(FolderError, match="val is a broken symlink"):
        folder.scan_folder(str(root))


# ---------------------------------------------------------------- decoding ------------------

def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def uniform(mode, value, size=(3, 2)):
    return Image.new(mode, size, value)


def palette(transparency=None, mode="P"):
    image = Image.new("P", (3, 2), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image.convert("PA") if mode == "PA" else image


# Every mode of Pillow: an image of it and the [0, 1] RGB it must decode to.
DECODED = [
    ("1", lambda: uniform("1", 1), (1, 1, 1)),
    ("L", lambda: uniform("L", 51), (0.2, 0.2, 0.2)),
    ("LA", lambda: uniform("LA", (51, 0)), (0.2, 0.2, 0.2)),  # alpha dropped
    ("La", lambda: uniform("La", (100, 128)), (199 / 255,) * 3),  # un-premultiplied
    ("P", lambda: palette(), (10 / 255, 20 / 255, 30 / 255)),
    ("P", lambda: palette(transparency=1), (10 / 255, 20 / 255, 30 / 255)),
    ("PA", lambda: palette(mode="PA"), (10 / 255, 20 / 255, 30 / 255)),
    ("RGB", lambda: uniform("RGB", (10, 20, 30)), (10 / 255, 20 / 255, 30 / 255)),
    ("RGBA", lambda: uniform("RGBA", (10, 20, 30, 0)), (10 / 255, 20 / 255, 30 / 255)),
    ("RGBa", lambda: uniform("RGBa", (100, 50, 20, 128)), (199 / 255, 99 / 255, 39 / 255)),
    ("RGBX", lambda: uniform("RGBX", (10, 20, 30, 99)), (10 / 255, 20 / 255, 30 / 255)),
    ("CMYK", lambda: uniform("CMYK", (255, 0, 0, 0)), (0, 1, 1)),  # cyan
    ("CMYK", lambda: uniform("CMYK", (0, 0, 0, 255)), (0, 0, 0)),
    ("YCbCr", lambda: uniform("YCbCr", (255, 128, 128)), (1, 1, 1)),
    ("YCbCr", lambda: uniform("YCbCr", (76, 85, 255)), (254 / 255, 0, 0)),  # red
    ("LAB", lambda: uniform("LAB", (255, 128, 128)), (254 / 255, 1, 254 / 255)),  # white
    ("LAB", lambda: uniform("LAB", (128, 128, 128)), (119 / 255,) * 3),  # L* 50: mid grey
    ("HSV", lambda: uniform("HSV", (0, 255, 255)), (1, 0, 0)),
    ("HSV", lambda: uniform("HSV", (170, 255, 128)), (0, 0, 128 / 255)),
    ("I;16", lambda: uniform("I;16", 1000), (1000 / 65535,) * 3),  # not rounded to 8 bits
    ("I;16L", lambda: uniform("I;16L", 65535), (1, 1, 1)),
    ("I;16B", lambda: uniform("I;16B", 257), (1 / 255,) * 3),
    ("I;16N", lambda: uniform("I;16N", 1), (1 / 65535,) * 3),
    ("I", lambda: uniform("I", 200), (200 / 255,) * 3),  # 8-bit values in 32 bits
    ("I", lambda: uniform("I", 1000), (1000 / 65535,) * 3),  # 16-bit values in 32 bits
    ("F", lambda: uniform("F", 0.3), (0.3, 0.3, 0.3)),
    ("F", lambda: uniform("F", 1.0), (1, 1, 1)),
]


@needs_vision
def test_every_pillow_mode_has_a_rule_and_a_test():
    from PIL.Image import MODES

    assert set(MODES) <= set(folder.DECODE)
    assert set(MODES) <= {mode for mode, _, _ in DECODED}


@needs_vision
@pytest.mark.parametrize("mode, make, rgb", DECODED,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(DECODED)])
def test_each_mode_decodes_to_its_values(mode, make, rgb):
    image = make()
    assert image.mode == mode
    for augment in ("none", "pad-crop"):
        torch.manual_seed(0)
        x = folder.train_transform(4, augment)(image)
        assert x.shape == (3, 4, 4) and x.dtype == torch.float32
        if augment == "none":
            expected = torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, 4, 4)
            assert torch.allclose(x, expected, atol=1e-6, rtol=0), (mode, x[:, 0, 0])
        assert 0 <= x.min() and x.max() <= 1


@needs_vision
@pytest.mark.parametrize("mode, value, match", [
    ("F", 2.0, r"mode F .* values in \[0, 1\].*\[2, 2\]"),
    ("F", -0.5, r"mode F .*\[-0\.5, -0\.5\]"),
    ("F", float("nan"), r"mode F .*NaN or infinite"),
    ("F", float("inf"), r"mode F .*NaN or infinite"),
    ("I", -1, r"mode I .*\[-1, -1\]"),
    ("I", 70000, r"mode I .*\[70000, 70000\]"),
])
def test_values_a_mode_cannot_hold_are_refused_naming_it(mode, value, match):
    with pytest.raises(FolderError, match=match):
        folder.eval_transform(4)(uniform(mode, value))


@needs_vision
@pytest.mark.parametrize("mode", ["BGR;24", "BGR;15", "XYZ"])
def test_modes_without_a_rule_are_refused(mode):
    import types

    with pytest.raises(FolderError, match=rf"Pillow mode {mode} is not"):
        folder.decode(types.SimpleNamespace(mode=mode))


@needs_vision
def test_thirty_two_bit_tiffs_decode_to_their_values(tmp_path):
    """A float TIFF in [0, 1] used to read as zeros, a 32-bit integer one of 0..255 as /257."""
    ramp = np.linspace(0, 1, 6, dtype=np.float32)[None, :].repeat(4, 0)
    for c, pixels in (("a", ramp), ("b", (ramp * 255).round().astype(np.int32))):
        for i in range(2):
            Image.fromarray(pixels).save(_mkdir(tmp_path / "train" / c) / f"{i}.tif")
    s = folder.scan_folder(str(tmp_path))
    ds = ImageFiles(s.root, s.train, folder.eval_transform(4))
    for i, (rel, _) in enumerate(s.train):
        decoded = ds.load(i)
        assert decoded.shape == (3, 4, 6), rel
        assert torch.allclose(decoded, torch.from_numpy(ramp).expand(3, 4, 6), atol=0.5 / 255)
        assert abs(ds[i][0].mean() - 0.5) < 0.01  # the centre of the ramp, not black


@needs_vision
def test_sixteen_bit_pgm_read_as_mode_i_keeps_its_scale(tmp_path):
    """Pillow opens a PGM of maxval 1023 as mode I scaled to 0..65535: its value 1 is 64,
    which must read 1/1023, not 64/255 (the PNG/PPM rule of DECODE["I"])."""
    path = tmp_path / "dark.pgm"
    path.write_bytes(b"P5\n2 2\n1023\n" + np.full(4, 1, ">u2").tobytes())
    with Image.open(path) as image:
        image.load()
        assert image.mode == "I"
        x = folder.decode(image)
    assert torch.allclose(x, torch.full((3, 2, 2), 1 / 1023), atol=1e-5)


@needs_vision
def test_a_refused_mode_is_skipped_at_scan(tmp_path, monkeypatch):
    make_tree(tmp_path, per_class=4)  # image 1 of each class is mode L
    monkeypatch.setitem(folder.DECODE, "L", ("refuse", "a test refuses it"))
    s = folder.scan_folder(str(tmp_path))
    assert dict(s.skipped)["train/cat/img1.png"] == "Pillow mode L is not decoded: a test " \
                                                   "refuses it"
    assert len(s.train) == 9


# ---------------------------------------------------------------- EXIF orientation ----------

@needs_vision
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation, method", [(6, "ROTATE_270"), (3, "ROTATE_180"),
                                                 (2, "FLIP_LEFT_RIGHT")])
def test_exif_orientation_is_applied(tmp_path, fmt, orientation, method):
    pixels = np.zeros((20, 28, 3), np.uint8)
    pixels[:, :14] = (250, 0, 0)  # left red, right blue, top rows green
    pixels[:, 14:] = (0, 0, 250)
    pixels[:4] = (0, 250, 0)
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for c in ("a", "b"):
        _mkdir(tmp_path / "train" / c)
        stored.save(tmp_path / "train" / c / f"x.{fmt.lower()}", fmt, exif=exif, quality=95)
    s = folder.scan_folder(str(tmp_path))
    ds = ImageFiles(s.root, s.train, folder.eval_transform(8))
    seen = np.asarray(ds.load(0), dtype=np.int16)
    upright = np.asarray(stored.transpose(getattr(Image.Transpose, method)), dtype=np.int16)
    assert seen.shape == upright.shape
    assert np.abs(seen - upright).mean() < (1 if fmt == "PNG" else 12)


# ---------------------------------------------------------------- errors in workers ---------

@needs_vision
def test_a_truncated_image_fails_alike_in_a_worker(tmp_path):
    make_tree(tmp_path, per_class=2)
    cut = tmp_path / "train" / "cat" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])  # the header intact
    s = folder.scan_folder(str(tmp_path))
    ds = ImageFiles(s.root, s.train, folder.eval_transform(8))
    with pytest.raises(FolderError) as here:
        ds[s.train.index(("train/cat/cut.jpg", 0))]
    assert "cut.jpg" in str(here.value) and "\n" not in str(here.value)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    with pytest.raises(FolderError) as there:
        list(loader)
    assert str(there.value) == str(here.value)  # one line, not the worker's traceback
    assert "Caught FolderError in DataLoader worker" in there.value.worker_traceback
    again = pickle.loads(pickle.dumps(there.value))
    assert type(again) is FolderError and str(again) == str(here.value)
    assert str(FolderError("Caught FolderError elsewhere.\nno")) == \
        "Caught FolderError elsewhere.\nno"  # only torch's worker text is unwrapped
