"""fastadv.data: the real file formats (tiny CIFAR-10 pickles and MNIST IDX files built here,
loaded through the real code with md5 checks on), downloads from a file:// mirror, digits,
synthetic data and random_crop_flip against a per-example reference."""

import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastadv.data import (DATASETS, ChecksumError, DataFileError, Dataset, DatasetNotFoundError,
                          DownloadError, load_dataset, random_crop_flip, synthetic)
from fastadv.data import cifar10, mnist
from fastadv.data.synthetic import class_patterns

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- CIFAR-10 --------------------

def make_cifar(root, per_batch=7, n_test=5, seed=0):
    """Write cifar-10-batches-py/ under root in the real format; return (expected uint8 train
    [35, 3, 32, 32], train labels, test images, test labels, {file: md5})."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = {}, {}
    for i, name in enumerate(CIFAR_NAMES):
        n = n_test if name == "test_batch" else per_batch
        rows[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[name] = [int(v) for v in rng.integers(0, 10, n)]
        # The real files are Python 2 pickles (str keys, which load as str); also cover
        # bytes keys, which is what re-pickling under Python 3 gives.
        key = (lambda k: k) if i % 2 else (lambda k: k.encode())
        entry = {key("batch_label"): f"batch {i}", key("labels"): labels[name],
                 key("data"): rows[name], key("filenames"): [f"img{j}.png" for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    train = np.concatenate([rows[n] for n in CIFAR_NAMES[:5]])
    y_train = sum((labels[n] for n in CIFAR_NAMES[:5]), [])
    sums = {name: md5_of(folder / name) for name in CIFAR_NAMES}
    return train, y_train, rows["test_batch"], labels["test_batch"], sums


def make_cifar_archive(root, tmp):
    """make_cifar in tmp, packed as root/cifar-10-python.tar.gz; the folder is not in root."""
    expected = make_cifar(tmp)
    archive = root / "cifar-10-python.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    sums = dict(expected[4], **{"cifar-10-python.tar.gz": md5_of(archive)})
    return expected[:4] + (sums,)


def check_cifar(ds, train, y_train, test, y_test):
    assert isinstance(ds, Dataset) and ds.name == "cifar10"
    assert ds.x_train.shape == (35, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.is_contiguous() and ds.x_train.device.type == "cpu"
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    # Row layout: the first 1024 bytes are the red plane, row by row.
    assert torch.equal(ds.x_train[8, 0], torch.tensor(train[8, :1024]).view(32, 32).float() / 255)
    blue_3_5 = torch.tensor(train[8, 2048 + 3 * 32 + 5]).float() / 255  # blue plane, row 3, col 5
    assert torch.equal(ds.x_train[8, 2, 3, 5], blue_3_5)
    assert torch.equal(ds.x_train, torch.tensor(train).view(-1, 3, 32, 32).float() / 255)
    assert torch.equal(ds.x_test, torch.tensor(test).view(-1, 3, 32, 32).float() / 255)
    assert ds.y_train.tolist() == y_train and ds.y_test.tolist() == y_test
    assert ds.num_classes == 10 and ds.augment and ds.shape == (3, 32, 32)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2471, 0.2435, 0.2616)


def test_cifar10_folder(tmp_path, monkeypatch):
    *expected, sums = make_cifar(tmp_path)
    monkeypatch.setattr(cifar10, "MD5", sums)  # load_dataset uses the module table
    check_cifar(load_dataset("cifar10", str(tmp_path)), *expected)


def test_cifar10_archive_is_verified_and_extracted(tmp_path):
    root = tmp_path / "data"
    *expected, sums = make_cifar_archive(root, tmp_path / "src")
    x_train, y_train, x_test, y_test = cifar10.load(root, checksums=sums)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in os.listdir(root) if p.startswith(".")]  # no temp folder left
    assert torch.equal(x_train, torch.tensor(expected[0]).view(-1, 3, 32, 32).float() / 255)
    assert y_test.tolist() == expected[3]


def test_cifar10_checksum_mismatch_names_the_file(tmp_path):
    *_, sums = make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        cifar10.load(tmp_path, checksums=sums)
    message = str(info.value)
    assert str(path) in message and sums["data_batch_3"] in message and md5_of(path) in message
    assert "delete" in message


def test_cifar10_archive_checksum_mismatch(tmp_path):
    root = tmp_path / "data"
    *_, sums = make_cifar_archive(root, tmp_path / "src")
    with pytest.raises(ChecksumError, match="cifar-10-python.tar.gz"):
        cifar10.load(root, checksums=dict(sums, **{"cifar-10-python.tar.gz": "0" * 32}))
    assert not (root / "cifar-10-batches-py").exists()  # nothing extracted from a bad archive


@pytest.mark.parametrize("member, link", [("../evil", None), ("/tmp/fastadv-evil", None),
                                          ("a/../../evil", None), ("evil", "../../evil")])
def test_cifar10_archive_with_unsafe_paths_is_refused(tmp_path, member, link):
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)  # TarInfo keeps a leading "/" (tar.add would strip it)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataFileError, match="refusing member"):
        cifar10.load(root, checksums={"cifar-10-python.tar.gz": md5_of(archive)})
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]
    assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/fastadv-evil")


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", str(tmp_path))
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "--download" in message


def test_cifar10_download_from_mirror(tmp_path, monkeypatch):
    mirror, root = tmp_path / "mirror", tmp_path / "data"
    *expected, sums = make_cifar_archive(mirror, tmp_path / "src")
    monkeypatch.setattr(cifar10, "MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(cifar10, "MD5", sums)
    check_cifar(load_dataset("cifar10", str(root), download=True), *expected)
    assert md5_of(root / "cifar-10-python.tar.gz") == sums["cifar-10-python.tar.gz"]


def test_cifar10_download_with_bad_md5_leaves_nothing(tmp_path, monkeypatch):
    mirror, root = tmp_path / "mirror", tmp_path / "data"
    *_, sums = make_cifar_archive(mirror, tmp_path / "src")
    monkeypatch.setattr(cifar10, "MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(cifar10, "MD5", dict(sums, **{"cifar-10-python.tar.gz": "f" * 32}))
    with pytest.raises(DownloadError, match="expected f{32}"):
        load_dataset("cifar10", str(root), download=True)
    assert os.listdir(root) == []  # neither the real name nor a temp file


# ---------------------------------------------------------------- MNIST -----------------------

def idx_bytes(array, magic):
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def make_mnist(folder, gz, n_train=6, n_test=4, hw=(7, 5), seed=0):
    """The four IDX files (gz or raw) in folder; return (arrays, {gz name: md5})."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in MNIST_NAMES:
        n = n_train if name.startswith("train") else n_test
        images = "images" in name
        arrays[name] = rng.integers(0, 256 if images else 10, (n, *hw) if images else (n,),
                                    dtype=np.uint8)
        data = idx_bytes(arrays[name], 2051 if images else 2049)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    sums = {n + ".gz": md5_of(folder / (n + ".gz")) for n in MNIST_NAMES} if gz else {}
    return arrays, sums


def check_mnist(ds, arrays):
    assert ds.name == "mnist" and ds.x_train.shape == (6, 1, 7, 5)
    assert ds.x_test.shape == (4, 1, 7, 5)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train[:, 0], torch.tensor(arrays[MNIST_NAMES[0]]).float() / 255)
    assert torch.equal(ds.x_test[:, 0], torch.tensor(arrays[MNIST_NAMES[2]]).float() / 255)
    assert ds.y_train.tolist() == arrays[MNIST_NAMES[1]].tolist()
    assert ds.y_test.tolist() == arrays[MNIST_NAMES[3]].tolist()
    assert ds.mean == (0.1307,) and ds.std == (0.3081,) and not ds.augment


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist(tmp_path, monkeypatch, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays, sums = make_mnist(folder, gz)
    monkeypatch.setattr(mnist, "MD5", sums)  # raw files need no md5: an empty table proves it
    check_mnist(load_dataset("mnist", str(tmp_path)), arrays)


def test_mnist_gz_checksum_mismatch(tmp_path):
    _, sums = make_mnist(tmp_path, gz=True)
    bad = dict(sums, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(ChecksumError, match=re.escape(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))):
        mnist.load(tmp_path, checksums=bad)


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: struct.pack(">I", 2049) + b[4:], "magic number 2049, expected 2051"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "truncated"),
    (lambda b: b[:10], "too short"),
])
def test_mnist_corrupt_idx(tmp_path, corrupt, match):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataFileError, match=match) as info:
        mnist.load(tmp_path, checksums={})
    assert str(path) in str(info.value)


def test_mnist_label_count_mismatch(tmp_path):
    make_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8), 2049))
    with pytest.raises(DataFileError, match="6 images but .* has 5 labels"):
        mnist.load(tmp_path, checksums={})


def test_mnist_missing_files(tmp_path):
    make_mnist(tmp_path / "elsewhere", gz=True)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # present: not listed as missing
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", str(tmp_path))
    message = str(info.value)
    for name in MNIST_NAMES[1:]:
        assert str(tmp_path / (name + ".gz")) in message
    assert str(tmp_path / "train-images-idx3-ubyte.gz") not in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message and "--download" in message


def test_mnist_download_tries_the_next_mirror(tmp_path, monkeypatch):
    arrays, sums = make_mnist(tmp_path / "mirror", gz=True)
    root = tmp_path / "data"
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setattr(mnist, "MIRRORS", [dead, (tmp_path / "mirror").as_uri() + "/"])
    monkeypatch.setattr(mnist, "MD5", sums)
    check_mnist(load_dataset("mnist", str(root), download=True), arrays)
    assert sorted(os.listdir(root)) == sorted(n + ".gz" for n in MNIST_NAMES)


def test_data_dir_defaults_to_env(tmp_path, monkeypatch):
    arrays, sums = make_mnist(tmp_path, gz=True)
    monkeypatch.setenv("FASTADV_DATA", str(tmp_path))
    monkeypatch.setattr(mnist, "MD5", sums)
    check_mnist(load_dataset("mnist"), arrays)


def test_published_checksums():
    hex32 = re.compile(r"[0-9a-f]{32}")
    assert set(cifar10.MD5) == {"cifar-10-python.tar.gz", *CIFAR_NAMES}
    assert set(mnist.MD5) == {n + ".gz" for n in MNIST_NAMES}
    for table in (cifar10.MD5, mnist.MD5):
        assert all(hex32.fullmatch(v) for v in table.values())
        assert len(set(table.values())) == len(table)
    assert cifar10.MD5["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert mnist.MD5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert cifar10.MIRRORS == ["https://www.cs.toronto.edu/~kriz/"]
    assert mnist.MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


# ---------------------------------------------------------------- load_dataset ----------------

def test_unknown_name():
    with pytest.raises(ValueError, match="name must be one of cifar10, mnist, digits, synthetic, "
                                         "fashion-mnist, kmnist or idx:PATH"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="or idx:PATH"):
        load_dataset("idx:")  # a folder is needed
    assert DATASETS == ("cifar10", "mnist", "digits", "synthetic", "fashion-mnist", "kmnist")


def test_digits():
    from fastadv.demo import load

    ds = load_dataset("digits", seed=0)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and not ds.augment
    assert ds.shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.mean[0] == pytest.approx(ds.x_train.mean().item(), abs=1e-6)
    assert ds.std[0] == pytest.approx(ds.x_train.std(correction=0).item(), abs=1e-6)
    (x_train, y_train), (x_test, y_test) = load(0)
    assert torch.equal(x_train, ds.x_train) and torch.equal(y_test, ds.y_test)
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_train, ds.y_train)
    assert not torch.equal(other.y_train, ds.y_train)


def test_digits_split_is_the_old_demo_split():
    from sklearn.datasets import load_digits

    # fastadv.demo.load as it was before fastadv.data existed.
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    split = int(0.8 * len(y))
    ds = load_dataset("digits", seed=3)
    assert torch.equal(ds.x_train, x[order[:split]]) and torch.equal(ds.y_train, y[order[:split]])
    assert torch.equal(ds.x_test, x[order[split:]]) and torch.equal(ds.y_test, y[order[split:]])


@pytest.mark.parametrize("n, seed", [(1, 0), (64, 1), (5000, 2)])  # 5000: several chunks
def test_synthetic_is_the_mix_of_patterns_and_noise(n, seed):
    from benchmarks.attack import synthetic_cifar

    patterns = class_patterns(10, (3, 32, 32))
    gen = torch.Generator().manual_seed(seed)
    y_ref = torch.randint(0, 10, (n,), generator=gen)
    x_ref = (0.6 * patterns[y_ref] + 0.4 * torch.rand(n, 3, 32, 32, generator=gen)).clamp(0, 1)
    x, y = synthetic(n, seed=seed)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    x_bench, y_bench = synthetic_cifar(n, "cpu", seed)
    assert torch.equal(x_bench, x) and torch.equal(y_bench, y)


def test_synthetic_classes_survive_the_cifar_augmentation():
    patterns = class_patterns(10, (3, 32, 32))
    assert patterns.min() >= 0 and patterns.max() <= 1
    torch.testing.assert_close(patterns, patterns.flip(-1), atol=1e-6, rtol=0)  # symmetric
    x, y = synthetic(1000, seed=3)
    crops = random_crop_flip(x, generator=torch.Generator().manual_seed(0))

    def nearest_pattern(images):  # E[x | class c] = 0.6 * pattern_c + 0.2 (before clamping)
        return torch.cdist(images.flatten(1), (0.6 * patterns + 0.2).flatten(1)).argmin(1)

    assert (nearest_pattern(x) == y).float().mean() > 0.99
    assert (nearest_pattern(crops) == y).float().mean() > 0.7  # chance: 0.1


def test_synthetic():
    x, y = synthetic(50, (2, 5, 6), num_classes=3, seed=7)
    assert x.shape == (50, 2, 5, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == {0, 1, 2}
    x2, y2 = synthetic(50, (2, 5, 6), num_classes=3, seed=7)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(synthetic(50, (2, 5, 6), num_classes=3, seed=8)[0], x)
    # Same class, same pattern: the class mean is far closer to its pattern than noise.
    assert (x[y == 0].mean(0) - x[y == 1].mean(0)).abs().mean() > 0.1


def test_load_synthetic():
    ds = load_dataset("synthetic", seed=1, synthetic_shape=(3, 32, 32), synthetic_train=40,
                      synthetic_test=20)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.augment and ds.num_classes == 10 and len(ds.mean) == 3
    assert torch.equal(ds.x_train, synthetic(40, seed=3)[0])
    assert torch.equal(ds.x_test, synthetic(20, seed=4)[0])
    assert torch.allclose(torch.tensor(ds.mean), ds.x_train.mean((0, 2, 3)))
    small = load_dataset("synthetic", synthetic_shape=(1, 16, 16), synthetic_train=8,
                         synthetic_test=4, num_classes=4)
    assert small.shape == (1, 16, 16) and not small.augment and small.num_classes == 4
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("digits", num_classes=4)


# ---------------------------------------------------------------- random_crop_flip ------------

def reference_crop_flip(x, pad, generator):
    """One example at a time: zero canvas, paste, crop at the drawn offsets, maybe flip."""
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for k in range(n):
        canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=x.dtype, device=x.device)
        canvas[:, pad:pad + h, pad:pad + w] = x[k]
        oy, ox = offsets[k].tolist()
        crop = canvas[:, oy:oy + h, ox:ox + w]
        out[k] = crop.flip(-1) if flips[k] else crop
    return out, flips.bool()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [0, 1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_random_crop_flip_matches_reference(device, pad, dtype, channels_last):
    x = (torch.rand(9, 3, 6, 5, device=device) * 200 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = random_crop_flip(x, pad, generator=torch.Generator(device).manual_seed(5))
    expected, flips = reference_crop_flip(x, pad, torch.Generator(device).manual_seed(5))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    assert torch.equal(out, expected)
    if pad == 0:  # no room to shift: an unflipped example is its input, a flipped one mirrored
        assert torch.equal(out[~flips], x[~flips]) and torch.equal(out[flips], x[flips].flip(-1))
        assert 0 < flips.sum() < len(flips)


def test_random_crop_flip_is_a_shifted_copy():
    """Without the reference's draws: each output is its input shifted by at most pad (and
    maybe mirrored), with zeros exactly where padding came in."""
    pad, (h, w) = 3, (8, 7)
    x = torch.rand(16, 2, h, w) + 0.1  # no zeros of its own
    out = random_crop_flip(x, pad, generator=torch.Generator().manual_seed(0))
    seen = set()
    for k in range(len(x)):
        canvas = F.pad(x[k], (pad,) * 4)
        matches = [(oy, ox, flip) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                   for flip in (False, True)
                   if torch.equal(out[k], (lambda c: c.flip(-1) if flip else c)(
                       canvas[:, oy:oy + h, ox:ox + w]))]
        assert len(matches) == 1, k
        seen.add(matches[0])
    assert len(seen) > 8  # the offsets and flips really vary between examples


def test_random_crop_flip_determinism_and_default_generator():
    x = torch.rand(32, 3, 8, 8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(4)
    d = random_crop_flip(x)
    torch.manual_seed(4)
    assert torch.equal(d, random_crop_flip(x))
    assert torch.equal(x, x.clone())  # input untouched
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(x[0])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
