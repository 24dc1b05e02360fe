"""MNIST-format data beyond the official MNIST: a set of one's own (--dataset idx:PATH,
gzipped or not, structural checks only), --no-verify, the checksum error's advice, and the
official Fashion-MNIST and KMNIST files (names, md5s, folders, download from a mirror)."""

import gzip
import hashlib
import json
import os
import re
import struct

import numpy as np
import pytest
import torch

from fastadv.data import ChecksumError, DataFileError, DatasetNotFoundError, load_dataset
from fastadv.data import fashion_mnist, kmnist, mnist
from fastadv.train.cli import main

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]


def idx_bytes(array, magic):
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def write_set(folder, arrays, gz=True, names=NAMES):
    """arrays: [train images uint8 [N, H, W], train labels, test images, test labels]."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(names, arrays):
        data = idx_bytes(array, 2051 if array.ndim == 3 else 2049)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    return arrays


def random_set(n_train=12, n_test=5, hw=(6, 6), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train, dtype=np.uint8) % classes  # every class present
    return [rng.integers(0, 256, (n_train, *hw), dtype=np.uint8), y_train,
            rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
            rng.integers(0, classes, n_test, dtype=np.uint8)]


def digits_set():
    """scikit-learn's digits (real images) as IDX arrays: pixels 0..16 -> 0..255."""
    ds = load_dataset("digits", seed=0)
    to_u8 = lambda x: (x[:, 0] * 255).round().to(torch.uint8).numpy()  # noqa: E731
    return [to_u8(ds.x_train), ds.y_train.to(torch.uint8).numpy(), to_u8(ds.x_test),
            ds.y_test.to(torch.uint8).numpy()]


def check_loaded(ds, arrays, classes, mean=None):
    """ds holds arrays; its mean is `mean`, or else the training pixels' own."""
    assert ds.x_train.shape == (len(arrays[0]), 1, *arrays[0].shape[1:])
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train[:, 0], torch.tensor(arrays[0]).float() / 255)
    assert torch.equal(ds.x_test[:, 0], torch.tensor(arrays[2]).float() / 255)
    assert ds.y_train.tolist() == arrays[1].tolist() and ds.y_test.tolist() == arrays[3].tolist()
    assert ds.num_classes == classes and not ds.augment
    mean = float(torch.tensor(arrays[0]).float().div(255).mean()) if mean is None else mean
    assert ds.mean == pytest.approx((mean,), rel=1e-5)


# --------------------------------------------------------------------------- idx:PATH


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_set_of_ones_own_loads(tmp_path, gz):
    arrays = write_set(tmp_path / "mine", random_set(classes=3), gz=gz)
    ds = load_dataset(f"idx:{tmp_path / 'mine'}")
    check_loaded(ds, arrays, classes=3)  # the classes are 0 .. the largest label


def test_idx_accepts_the_common_name_variants(tmp_path):
    names = ["train-images.idx3-ubyte", "train-labels.idx1-ubyte", "test-images-idx3-ubyte",
             "t10k-labels.idx1-ubyte"]
    arrays = random_set()
    write_set(tmp_path, arrays[:2], gz=False, names=names[:2])
    write_set(tmp_path, arrays[2:], gz=True, names=names[2:])
    check_loaded(load_dataset(f"idx:{tmp_path}"), arrays, classes=3)


def test_idx_missing_folder_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such folder"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}")
    write_set(tmp_path, random_set()[:2])
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(f"idx:{tmp_path}")
    message = str(info.value)
    assert "missing t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in message
    assert "train-images-idx3-ubyte.gz" in message  # what it found


@pytest.mark.parametrize("change, match", [
    (lambda a: [a[0][:, :, :5], *a[1:]], r"training images are \(6, 5\) but test images \(6, 6\)"),
    (lambda a: [a[0], a[1][:-1], *a[2:]], "12 images but .* has 11 labels"),
    (lambda a: [a[0], np.zeros_like(a[1]), *a[2:]], "1 class in the training labels"),
    (lambda a: [a[0][:0], a[1][:0], *a[2:]], "no training images"),
])
def test_idx_structure_is_checked(tmp_path, change, match):
    write_set(tmp_path, change(random_set()))
    with pytest.raises(DataFileError, match=match):
        load_dataset(f"idx:{tmp_path}")


def test_idx_bad_file_names_the_file(tmp_path):
    write_set(tmp_path, random_set())
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 2, 2), np.uint8), 2051)))
    with pytest.raises(DataFileError, match="magic number 2051, expected 2049") as info:
        load_dataset(f"idx:{tmp_path}")
    assert str(path) in str(info.value)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataFileError, match="not a readable .gz"):
        load_dataset(f"idx:{tmp_path}")


# --------------------------------------------------------------------------- official sets


def test_foreign_mnist_files_get_advice_and_load_with_no_verify(tmp_path):
    """A 5,000-image subset is not the official MNIST: the md5 fails, and the error says how
    to load it instead of calling it corrupt."""
    arrays = write_set(tmp_path, random_set(classes=10, n_train=20))
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", str(tmp_path))
    message = str(info.value)
    assert f"--dataset idx:{tmp_path}" in message and "--no-verify" in message
    assert "If this is the official MNIST file" in message
    check_loaded(load_dataset("mnist", str(tmp_path), verify=False), arrays, classes=10,
                 mean=mnist.MEAN[0])  # declared MNIST: MNIST's normalisation
    assert load_dataset(f"idx:{tmp_path}").num_classes == 10
    # The trainer's --no-verify reaches the loader through the run's config.
    from fastadv.data import load_run_dataset
    from fastadv.train.config import parser, resolve

    args = parser().parse_args(["--dataset", "mnist", "--data-dir", str(tmp_path), "--no-verify"])
    assert len(load_run_dataset(resolve(args).to_dict()).y_train) == 20


def test_verify_false_is_for_mnist_format_sets_only():
    with pytest.raises(ValueError, match="verify=False applies to the MNIST-format sets"):
        load_dataset("digits", verify=False)


def test_published_fashion_mnist_and_kmnist_checksums():
    """The md5s torchvision lists (torchvision/datasets/mnist.py) and its mirrors."""
    hex32 = re.compile(r"[0-9a-f]{32}")
    for module in (fashion_mnist, kmnist):
        assert set(module.MD5) == {n + ".gz" for n in NAMES}
        assert all(hex32.fullmatch(v) for v in module.MD5.values())
    assert fashion_mnist.MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert fashion_mnist.MD5["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert kmnist.MD5["train-images-idx3-ubyte.gz"] == "bdb82020997e1d708af4cf47b453dcf7"
    assert kmnist.MD5["t10k-labels-idx1-ubyte.gz"] == "7320c461ea6c1c855c0b718fb2a4b134"
    assert fashion_mnist.MIRRORS == ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    assert kmnist.MIRRORS == ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"]
    assert len({*fashion_mnist.MD5.values(), *kmnist.MD5.values(), *mnist.MD5.values()}) == 12


@pytest.mark.parametrize("name, module, folder, layout", [
    ("fashion-mnist", fashion_mnist, "fashion-mnist", "FashionMNIST/raw"),
    ("kmnist", kmnist, "kmnist", "KMNIST/raw")])
def test_fashion_mnist_and_kmnist_download_and_folders(tmp_path, monkeypatch, name, module,
                                                       folder, layout):
    arrays = write_set(tmp_path / "mirror", random_set(classes=10, n_train=20))
    sums = {n + ".gz": hashlib.md5((tmp_path / "mirror" / (n + ".gz")).read_bytes()).hexdigest()
            for n in NAMES}
    monkeypatch.setattr(module, "MD5", sums)
    monkeypatch.setattr(module, "MIRRORS", [(tmp_path / "mirror").as_uri() + "/"])
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(root / folder / NAMES[0]))):
        load_dataset(name, str(root))
    ds = load_dataset(name, str(root), download=True)
    check_loaded(ds, arrays, classes=10)
    assert sorted(os.listdir(root / folder)) == sorted(n + ".gz" for n in NAMES)
    # torchvision's layout works too; the official md5 is checked there as well.
    (root / layout).parent.mkdir(parents=True)
    os.replace(root / folder, root / layout)
    check_loaded(load_dataset(name, str(root)), arrays, classes=10)
    monkeypatch.setattr(module, "MD5", dict(sums, **{NAMES[3] + ".gz": "0" * 32}))
    title = {"fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}[name]
    with pytest.raises(ChecksumError, match=f"the official {title} file"):
        load_dataset(name, str(root))


# --------------------------------------------------------------------------- the trainer


def test_trainer_runs_on_an_idx_set_of_ones_own(tmp_path, monkeypatch, capsys):
    """Digits written as gzipped IDX files, trained on through idx:PATH (a relative PATH is
    recorded as absolute): the default validation split is 10 % of the 1437 examples."""
    write_set(tmp_path / "digits-idx", digits_set())
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "run")
    assert main(["--dataset", "idx:digits-idx", "--model", "small-cnn", "--width", "1",
                 "--epochs", "1", "--steps", "1", "--eval-steps", "1", "--eval-examples", "64",
                 "--eps", "0.2", "--lr", "3e-3", "--batch-size", "64", "--no-progress",
                 "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "training on 1293 examples, 144 of the 1437 held out for validation" in printed
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["dataset"] == f"idx:{tmp_path / 'digits-idx'}" and config["val_size"] is None
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["checkpoints"][0]["test_clean_acc"] > 0.2  # it learns from the files
    # fastadv.eval finds the run's data from its checkpoint, wherever it is started.
    from fastadv.eval.cli import main as eval_main

    monkeypatch.chdir(tmp_path / "run")
    report = str(tmp_path / "eval.json")
    assert eval_main(["--checkpoint", os.path.join(out, "last.pt"), "--n-examples", "16",
                      "--attacks", "fgsm", "--no-sanity", "--no-curve", "--no-progress",
                      "--json", report]) == 0
    assert json.load(open(report))["eps"] == pytest.approx(0.2)


def test_no_verify_flag_is_for_mnist_format_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "cifar10", "--no-verify", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "--no-verify applies to mnist, fashion-mnist, kmnist" in capsys.readouterr().err
