"""python -m fastadv.train --dataset folder:PATH with torchvision, timm and the user's own
models: training, evaluation of the checkpoint, exact resume after SIGKILL on the streamed
path, two-process DDP, and clear errors for bad folders and bad models."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastadv.checkpoint import load_checkpoint
from image_folder import make_image_folder, write_factory_module

TINY = ["--image-size", "24", "--steps", "2", "--eval-steps", "2", "--batch-size", "12",
        "--no-progress", "--lr", "0.02", "--eps", "4/255"]


def run(args, cwd=None, module="fastadv.train", timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def same_weights(a, b):
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), splits=("train", "test"))


def test_torchvision_resnet18_trains_and_evaluates(folder, tmp_path):
    out = str(tmp_path / "run")
    result = run(["--dataset", f"folder:{folder}", "--model", "torchvision:resnet18",
                  "--epochs", "1", "--workers", "2", "--out", out, *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 classes (c0, c1, c2), 36 training images" in result.stdout
    assert "test from test/ (12)" in result.stdout
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["classes"] == ["c0", "c1", "c2"] and config["model"] == "torchvision:resnet18"
    ckpt = load_checkpoint(os.path.join(out, "best.pt"))
    assert ckpt["model"]["net.fc.weight"].shape == (3, 512)  # num_classes from the data
    best = results(out)["checkpoints"][0]
    assert results(out)["test_examples"] == 12

    # fastadv.eval rebuilds the torchvision model and finds the same test split.
    report = str(tmp_path / "eval.json")
    evaluation = run(["--checkpoint", os.path.join(out, "best.pt"), "--attacks", "pgd",
                      "--steps", "2", "--restarts", "1", "--no-sanity", "--no-curve",
                      "--no-progress", "--json", report], module="fastadv.eval")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    figures = json.load(open(report))
    assert figures["n_examples"] == 12
    assert figures["clean_acc"] == pytest.approx(best["test_clean_acc"])


def test_own_factory_trains_and_resumes_exactly_after_sigkill(folder, tmp_path):
    """The streamed path (2 decoding workers, random crops and flips) killed mid-epoch and
    resumed ends with the uninterrupted run's weights."""
    write_factory_module(tmp_path)
    args = ["--dataset", f"folder:{folder}", "--model", "my_models:tiny_net", "--epochs", "3",
            "--workers", "2", "--save-every", "1", *TINY]
    whole = str(tmp_path / "whole")
    result = run([*args, "--out", whole], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "augmentation pad-crop" in result.stdout

    killed = str(tmp_path / "killed")
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.train", *args, "--out", killed],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last, done, deadline = os.path.join(killed, "last.pt"), 0, time.time() + 300
    while done < 4 and proc.poll() is None and time.time() < deadline:  # mid epoch 2 of 3
        time.sleep(0.005)
        if os.path.exists(last):
            try:
                done = load_checkpoint(last)["progress"]["global_step"]
            except (ValueError, FileNotFoundError):
                pass
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers
    assert proc.wait() == -signal.SIGKILL, "the kill should land mid-run"
    assert 0 < load_checkpoint(last)["progress"]["global_step"] < 3 * 2

    resumed = run([*args, "--out", killed, "--resume", "--workers", "1"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert same_weights(os.path.join(whole, "last.pt"), last)
    assert results(killed)["checkpoints"] == results(whole)["checkpoints"]


def test_resume_refuses_a_folder_that_changed(folder, tmp_path):
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(folder, data)
    write_factory_module(tmp_path)
    args = ["--dataset", f"folder:{data}", "--model", "my_models:tiny_net", "--epochs", "1",
            "--workers", "0", "--out", str(tmp_path / "run"), *TINY]
    assert run(args, cwd=tmp_path).returncode == 0
    os.remove(os.path.join(data, "train", "c0", "000.png"))
    result = run([*args, "--resume"], cwd=tmp_path)
    assert result.returncode == 2
    assert "changed since the run" in result.stderr


def test_two_process_ddp_streams_each_rank_its_half(folder, tmp_path):
    write_factory_module(tmp_path)
    out = str(tmp_path / "ddp")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fastadv.train", "--dataset", f"folder:{folder}", "--model",
         "my_models:tiny_net", "--epochs", "2", "--workers", "1", "--out", out, *TINY],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert len(ckpt["ranks"]) == 2
    assert ckpt["progress"]["global_step"] == 2 * (32 // 12)
    assert results(out)["checkpoints"][0]["test_clean_acc"] >= 0


@pytest.mark.parametrize("model, message", [
    ("no_such_module:tiny_net", "cannot import module"),
    ("my_models:missing", "tiny_net"),  # lists what the module has
    ("my_models:no_classes", "num_classes"),
    ("my_models:not_a_module", "str"),
    ("my_models:wrong_width", "3 classes"),
    ("torchvision:resnet181", "resnet18"),
    ("torchvision:", "--model"),
])
def test_bad_models_exit_2_naming_the_problem(folder, tmp_path, model, message):
    write_factory_module(tmp_path)
    out = tmp_path / "run"
    result = run(["--dataset", f"folder:{folder}", "--model", model, "--epochs", "1",
                  "--workers", "0", "--out", str(out), *TINY], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not out.exists()


def test_bad_folders_exit_2_and_unreadable_images_are_skipped(tmp_path):
    write_factory_module(tmp_path)

    def train(path, out="run"):
        return run(["--dataset", f"folder:{path}", "--model", "my_models:tiny_net",
                    "--epochs", "1", "--workers", "0", "--out", str(tmp_path / out), *TINY],
                   cwd=tmp_path)

    (tmp_path / "empty" / "train").mkdir(parents=True)
    result = train(tmp_path / "empty")
    assert result.returncode == 2 and "empty" in result.stderr
    one = make_image_folder(tmp_path / "one", classes=1)
    result = train(one)
    assert result.returncode == 2 and "at least 2 classes" in result.stderr
    result = train(tmp_path / "nowhere")
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert not (tmp_path / "run").exists()

    ok = make_image_folder(tmp_path / "ok")
    (tmp_path / "ok" / "train" / "c1" / "broken.png").write_bytes(b"not an image at all")
    result = train(ok, out="ok-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 unreadable file" in result.stdout
    assert "held out of train/" in result.stdout  # no val/ or test/: both held out


def test_a_truncated_image_reads_the_same_with_loader_workers(tmp_path):
    """--workers 2 used to print the DataLoader's 30-line worker traceback after "error:"."""
    from PIL import Image

    write_factory_module(tmp_path)
    data = make_image_folder(tmp_path / "images", classes=2)
    for i in range(12):  # every image of c0 a JPEG cut in half: the first batch meets one
        path = os.path.join(data, "train", "c0", f"{i:03d}.jpg")
        Image.open(os.path.join(data, "train", "c0", f"{i:03d}.png")).save(path, quality=95)
        os.remove(path[:-4] + ".png")
        with open(path, "rb") as f:
            body = f.read()
        with open(path, "wb") as f:
            f.write(body[:len(body) // 2])
    errors = []
    for workers in ("0", "2"):
        result = run(["--dataset", f"folder:{data}", "--model", "my_models:tiny_net",
                      "--epochs", "1", "--workers", workers, "--out",
                      str(tmp_path / f"run{workers}"), *TINY], cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        errors.append(result.stderr)
    assert errors[0] == errors[1]
    assert errors[1].count("\n") == 1 and errors[1].startswith(
        "python -m fastadv.train: error: cannot read image ")
    assert "image file is truncated" in errors[1] and "Traceback" not in errors[1]


def test_folder_needs_torchvision_and_says_so(tmp_path, monkeypatch, capsys):
    from fastadv.train.cli import main

    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"] + ["torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)  # imported already by earlier tests
    folder = make_image_folder(tmp_path / "images")
    assert main(["--dataset", f"folder:{folder}", "--model", "small-cnn", "--epochs", "1",
                 "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "pip install torchvision" in capsys.readouterr().err


def test_export_writes_a_folder_the_trainer_reads_back_exactly(tmp_path):
    """digits as PNGs, read back through the folder path at their own size with no
    augmentation, are the in-memory digits (quantised to 1/255, grey to RGB)."""
    from fastadv.data import folder as folder_data
    from fastadv.data import load_dataset
    from fastadv.data.export import main as export

    out = str(tmp_path / "digits")
    assert export(["digits", out, "--limit", "20"]) == 0
    splits = folder_data.scan_folder(out)
    assert len(splits.train) == 20 and splits.classes[0] == "00"
    files = folder_data.ImageFiles(splits.root, splits.train, folder_data.eval_transform(8))
    digits = load_dataset("digits")
    index = {path: i for i, (path, _) in enumerate(splits.train)}
    for k in (0, 7, 19):
        x, label = files[index[f"train/{int(digits.y_train[k]):02d}/{k:05d}.png"]]
        expected = (digits.x_train[k] * 255).round()
        assert label == int(digits.y_train[k])
        assert torch.equal((x * 255).round(), expected.expand(3, 8, 8))  # the same 8-bit pixels
        assert (x - expected / 255).abs().max() < 1e-7
