"""Code named by a file is never run unasked: a checkpoint or a run's config.json that names a
``package.module:factory`` model is refused through every entry point (load_model, eval,
the landscape experiment, train --resume), unless the user trusts it (``trust_code=True``,
``--trust-model-code``) or types the same ``--model``. The crafted files name a module that
writes a marker file when imported; each case runs in a fresh interpreter whose current
directory (importable, as under ``python -m``) holds that module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastadv.checkpoint import FORMAT, load_checkpoint, model_from_record, save_checked
from fastadv.model_specs import UntrustedModelCode
from fastadv.models import ModelArgsError, build_model
from fastadv.train.config import TrainConfig

SPEC = "evilmod:make"
EVIL = """
import pathlib
pathlib.Path("MARKER").write_text("imported")
def make(num_classes=10):
    raise RuntimeError("the factory ran")
"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_args(name=SPEC, **over):
    return {"name": name, "num_classes": 10, "in_channels": 1, "image_size": 8,
            "mean": (0.5,), "std": (0.5,), "width": None, **over}


def crafted_checkpoint(path, args=None, config=None):
    model = build_model("small-cnn", num_classes=10, in_channels=1, image_size=8)
    cfg = {**TrainConfig().to_dict(), "epochs": 1, "model": SPEC, **(config or {})}
    save_checked({
        "format": FORMAT, "config": cfg, "model_args": model_args() if args is None else args,
        "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": None,
        "progress": {"epoch": 1, "step_in_epoch": 0, "global_step": 1,
                     "best_score": 0.5, "best_epoch": 1, "history": []},
        "ranks": [{}], "world_size": 1, "torch": str(torch.__version__), "data_fingerprint": None,
    }, path)


@pytest.fixture
def place(tmp_path):
    """A folder holding evilmod.py, a crafted checkpoint and a crafted run folder."""
    (tmp_path / "evilmod.py").write_text(EVIL)
    crafted_checkpoint(str(tmp_path / "best.pt"))
    run = tmp_path / "run"
    run.mkdir()
    crafted_checkpoint(str(run / "last.pt"))
    only_config = tmp_path / "fresh"
    only_config.mkdir()
    # As a run killed before its first checkpoint leaves it (an attacker copies that form).
    (only_config / "config.json").write_text(json.dumps(
        {**TrainConfig().to_dict(), "model": SPEC, "epochs": 1, "out": str(only_config),
         "world_size": 1, "model_args": model_args(), "data_fingerprint": None}))
    return tmp_path


def run_in(place, *args, code=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=place, env=env, capture_output=True, text=True, timeout=300)


ENTRY_POINTS = {
    "load_model": dict(code="import fastadv; fastadv.load_model('best.pt')"),
    "eval": dict(args=("fastadv.eval", "--checkpoint", "best.pt", "--no-progress")),
    "landscape": dict(args=("fastadv.experiments", "landscape", "--checkpoint", "best.pt",
                            "--out", "land")),
    "train --resume (last.pt)": dict(args=("fastadv.train", "--resume", "--out", "run",
                                           "--no-progress")),
    "train --resume (config.json only)": dict(args=("fastadv.train", "--resume", "--out",
                                                    "fresh", "--no-progress")),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_code_named_by_a_file_is_not_run(place, entry):
    how = ENTRY_POINTS[entry]
    r = run_in(place, *how.get("args", ()), code=how.get("code"))
    assert not (place / "MARKER").exists(), f"{entry} imported the module the file names"
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()[-1]
    assert SPEC in err and ("--trust-model-code" in err or "trust_code" in err), err
    if "code" not in how:
        assert r.returncode == 2, r.stderr


TRUSTED = {
    "load_model(trust_code=True)": dict(
        code="import fastadv; fastadv.load_model('best.pt', trust_code=True)"),
    "eval --trust-model-code": dict(args=("fastadv.eval", "--checkpoint", "best.pt",
                                          "--trust-model-code")),
    "train --resume --trust-model-code": dict(args=("fastadv.train", "--resume", "--out",
                                                    "fresh", "--trust-model-code")),
    "train --resume --model SPEC": dict(args=("fastadv.train", "--resume", "--out", "fresh",
                                              "--model", SPEC)),
}


@pytest.mark.parametrize("entry", TRUSTED)
def test_trust_given_runs_the_code(place, entry):
    """The positive control: with trust, the module is imported (its factory then fails,
    which is reported as the factory's error)."""
    how = TRUSTED[entry]
    r = run_in(place, *how.get("args", ()), code=how.get("code"))
    assert (place / "MARKER").exists(), r.stderr
    assert "the factory ran" in r.stderr


@pytest.mark.parametrize("spec", ["this:x", "venv.__main__:main", "antigravity:geohash",
                                  "timm:hf-hub:someone/model"])
def test_specs_with_import_side_effects_need_trust(spec):
    """Standard-library modules run code on import (``this`` prints, ``venv.__main__``
    creates a virtualenv); an hf-hub name reads a model definition from outside timm's
    registry. None is imported from a file's say-so."""
    with pytest.raises(UntrustedModelCode, match="--trust-model-code"):
        model_from_record(model_args(spec), "crafted.pt")


def test_library_names_are_checked_against_the_registry():
    pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match="torchvision has no model 'os'"):
        model_from_record(model_args("torchvision:os", in_channels=3, mean=(0.5,)), "x.pt")


@pytest.mark.parametrize("args, message", [
    ({k: v for k, v in model_args("small-cnn").items() if k != "width"}, "lacks 'width'"),
    ({**model_args("small-cnn"), "extra": 1}, "unknown fields 'extra'"),
    (model_args("small-cnn", num_classes=-3), r"num_classes must lie in \[1, "),
    (model_args("small-cnn", num_classes="10"), "num_classes must be an integer"),
    (model_args("small-cnn", width=10**9), r"width must lie in \[1, 1024\]"),
    (model_args("madry-cnn", width=1024, image_size=16384), "would have .* parameters"),
    (model_args("small-cnn", mean=(0.5, 0.5)), "mean must hold 1 or in_channels"),
    (model_args("small-cnn", std=(float("nan"),)), "std values must be finite"),
    (model_args(7), "model name must be a non-empty string"),
    (["small-cnn"], "not a mapping"),
])
def test_crafted_model_fields_give_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        model_from_record(args, "crafted.pt")


def test_huge_sizes_are_refused_before_allocation():
    """A width or image size whose model would not fit in memory is refused by counting its
    parameters on the meta device: a real allocation would take minutes or be killed."""
    with pytest.raises(ModelArgsError, match="parameters"):
        build_model("madry-cnn", in_channels=1, image_size=8192, width=512)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("progress"), "lacks 'progress'"),
    (lambda c: c.update(extra=1), "unknown fields 'extra'"),
    (lambda c: c.update(config=[1]), "'config' is a list"),
    (lambda c: c["progress"].update(epoch="2"), "'epoch' is a str"),
    (lambda c: c.update(world_size=2), "do not match its world_size 2"),
])
def test_crafted_checkpoint_fields_give_clear_errors(tmp_path, edit, message):
    path = str(tmp_path / "x.pt")
    crafted_checkpoint(path, args=model_args("small-cnn"))
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop("sha256")
    edit(ckpt)
    save_checked(ckpt, path)  # a crafted file carries a valid checksum
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_config_json_is_not_a_checkpoint(tmp_path):
    """``eval --checkpoint run/config.json``: one line saying what the file is, not the
    unpickler's 20 lines."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    r = run_in(tmp_path, "fastadv.eval", "--checkpoint", "config.json")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "'config.json' is a JSON file, not a checkpoint; a run's checkpoints are its best.pt "
        "and last.pt")
    for name, kind in (("empty.pt", "empty"), ("metrics.jsonl", "a JSON file")):
        with pytest.raises(ValueError, match=f"is {kind}, not a checkpoint"):
            load_checkpoint(str(tmp_path / name))


def test_a_crafted_training_state_is_refused_on_resume(tmp_path):
    """Weights that fit but an optimizer state fastadv never wrote: one clear line, exit 2."""
    run = tmp_path / "run"
    run.mkdir()
    crafted_checkpoint(str(run / "last.pt"), args=model_args("small-cnn"),
                       config={"model": "small-cnn", "epochs": 2, "out": str(run)})
    r = run_in(tmp_path, "fastadv.train", "--resume", "--out", "run", "--no-progress")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "holds a training state fastadv cannot restore" in line, r.stderr
