"""What the trainer tells its user: a stalled run is warned about once (and --strict stops it
with status 3), ε can be warmed up, every checkpoint and every epoch's validation is attacked
from the same random starts, and the validation split is sized to the data."""

import json
import math
import os

import pytest
import torch

from fastadv.train import TrainConfig
from fastadv.train.cli import main
from fastadv.data.splits import validation_size
from fastadv.train.stall import STALL_EPOCHS, stall_reasons, stall_warning

FAST = ["--dataset", "digits", "--width", "1", "--steps", "1", "--eval-steps", "1",
        "--eval-examples", "64", "--no-progress"]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def read_results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- stall


def test_stall_criteria():
    cfg = TrainConfig.for_dataset("mnist", lr=1e-3, epochs=15)
    ln10 = math.log(10)
    stalled = {"loss": ln10 + 0.0004, "train_clean_acc": 0.09}
    learning = {"loss": 1.9, "train_clean_acc": 0.6}
    assert stall_reasons(stalled, 10, chance=0.11) == ["loss", "accuracy"]
    assert stall_reasons({"loss": 2.0}, 10, chance=0.11) == []  # no evaluation this epoch
    assert stall_reasons({"loss": 5.0, "train_clean_acc": 0.12}, 10, chance=0.11) == ["accuracy"]
    # TRADES: its cross-entropy term, not the total, is compared with ln(C).
    assert stall_reasons({"loss": 3.0, "loss_parts": {"natural_ce": ln10}}, 10, 0.1) == ["loss"]

    def history(*records):
        return [dict(r, epoch=i + 1) for i, r in enumerate(records)]

    assert stall_warning(history(learning, *[stalled] * (STALL_EPOCHS - 1)), 10, 0.11, cfg) is None
    assert stall_warning(history(*[stalled] * 2, learning, stalled), 10, 0.11, cfg) is None
    warning = stall_warning(history(learning, *[stalled] * STALL_EPOCHS), 10, 0.11, cfg)
    assert f"epochs 2-{STALL_EPOCHS + 1}" in warning and "ln(10) = 2.3026" in warning
    assert "--lr 0.001" in warning and "--eps-warmup 5" in warning and "--strict" in warning
    # Once: a history that has warned never warns again.
    warned = history(learning, *[stalled] * STALL_EPOCHS)
    warned[-1]["stall_warning"] = warning
    assert stall_warning(warned + history(stalled), 10, 0.11, cfg) is None


def test_stalled_run_warns_once_and_strict_exits_3(tmp_path, capsys):
    """A learning rate far too high collapses the digits model to a constant prediction."""
    out = str(tmp_path / "run")
    args = [*FAST, "--epochs", "5", "--lr", "30", "--out", out]
    assert main([*args, "--strict"]) == 3
    err = capsys.readouterr().err
    assert err.count("warning: training has stalled") == 1
    assert "--eps-warmup" in err and "--strict: the run stops here (exit status 3)" in err
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # stopped at the warning
    assert [("stall_warning" in r) for r in records] == [False, False, True]
    results = read_results(out)
    assert results["stalled"] and results["stopped_early"] and results["epochs_completed"] == 3
    assert results["stall"]["detected_at_epoch"] == 3
    assert "learning rate" in results["stall"]["warning"]

    # Resumed without --strict: trains on, and does not warn again (the history has warned).
    assert main(["--resume", "--out", out, "--no-progress"]) == 0
    assert "training has stalled" not in capsys.readouterr().err
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert sum("stall_warning" in r for r in records) == 1
    results = read_results(out)
    assert results["stalled"] and not results["stopped_early"]
    # A finished, stalled run under --strict: status 3 again, nothing trained.
    assert main(["--resume", "--out", out, "--no-progress", "--strict"]) == 3


def test_a_learning_run_does_not_warn(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "3", "--out", out, "--strict"]) == 0
    assert "stalled" not in capsys.readouterr().err
    assert not any("stall_warning" in r for r in read_metrics(out))
    results = read_results(out)
    assert results["stalled"] is False and results["stall"] is None


# --------------------------------------------------------------------------- eps warm-up


def test_eps_warmup_ramps_eps_linearly_per_step(tmp_path):
    out = str(tmp_path / "run")
    # 1293 training examples, batches of 64: 20 steps an epoch, eps reaches 0.2 at step 40.
    assert main([*FAST, "--epochs", "3", "--eps-warmup", "2", "--out", out]) == 0
    assert [r["eps"] for r in read_metrics(out)] == pytest.approx([0.1, 0.2, 0.2])
    assert read_results(out)["eps"] == pytest.approx(0.2)  # evaluation at the full eps


def test_eps_warmup_is_checked_and_part_of_the_result(tmp_path, capsys):
    from fastadv.train.methods import make_method

    with pytest.raises(ValueError, match="--eps-warmup 5 exceeds --epochs 3"):
        TrainConfig.for_dataset("digits", epochs=3, eps_warmup=5)
    with pytest.raises(ValueError, match="--eps-warmup must be >= 0"):
        TrainConfig.for_dataset("digits", eps_warmup=-1)
    cfg = TrainConfig.for_dataset("digits", eps_warmup=2, cuda_graph=True, device="cuda")
    method = make_method(cfg, None, None, torch.device("cpu"))
    method.set_eps_scale(0.25)
    assert (method.eps, method.alpha, method.cuda_graph) == (0.05, 0.0125, False)
    method.set_eps_scale(1.0)
    assert (method.eps, method.alpha, method.cuda_graph) == (0.2, 0.05, True)

    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "1", "--out", out]) == 0
    assert main(["--resume", "--out", out, "--eps-warmup", "1"]) == 2
    assert "--eps-warmup 0 -> 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- equal terms


def test_best_and_last_of_the_same_weights_report_the_same_accuracy(tmp_path):
    """One epoch: best.pt and last.pt hold the same weights, so the same numbers (the test
    attack of each checkpoint used to draw its own random starts)."""
    out = str(tmp_path / "run")
    # (seed 1: with starts drawn from the default generator the two rows differed here)
    assert main([*FAST, "--epochs", "1", "--seed", "1", "--out", out]) == 0
    best, last = read_results(out)["checkpoints"]
    assert (best["checkpoint"], last["checkpoint"]) == ("best", "last")
    assert best["epoch"] == last["epoch"] == 1
    assert best["test_clean_acc"] == last["test_clean_acc"]
    assert best["test_robust_acc"] == last["test_robust_acc"]


def test_evaluation_uses_fixed_starts_and_leaves_the_training_stream(tmp_path):
    """The per-epoch validation of unchanged weights gives the same figures every time, and
    evaluating draws nothing from the default generator (the training stream)."""
    from fastadv.train import distributed
    from fastadv.train.validation import clean_and_robust_accuracy
    from fastadv.data.sources import TensorEval
    from digits_model import train_digits_cnn

    model, x, y = train_digits_cnn(epochs=3)
    cfg = TrainConfig.for_dataset("digits", eval_steps=1)
    ctx = distributed.Context(rank=0, world_size=1, device=torch.device("cpu"))
    before = torch.get_rng_state()
    examples = TensorEval(x, y)
    runs = [clean_and_robust_accuracy(model, examples, cfg, ctx, "fp32", 64, "val")
            for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), before)
    assert runs[0] == runs[1] == runs[2]
    assert 0 < runs[0][1] < runs[0][0]  # a real attack: some, not all, examples fall
    other_seed = TrainConfig.for_dataset("digits", eval_steps=1, seed=1)
    assert clean_and_robust_accuracy(model, examples, other_seed, ctx, "fp32", 64,
                                     "val") != runs[0]


# --------------------------------------------------------------------------- validation size


def test_default_validation_split_is_a_capped_fraction():
    cfg = TrainConfig.for_dataset("mnist")
    assert cfg.val_size is None
    assert validation_size(cfg.val_size, 60_000) == 1000  # MNIST: the cap
    assert validation_size(cfg.val_size, 4_000) == 400  # a 4,000-image subset keeps 3,600 to train on
    assert validation_size(cfg.val_size, 1_437) == 144  # digits: as before
    assert validation_size(cfg.val_size, 5) == 1
    assert validation_size(TrainConfig.for_dataset("mnist", val_size=2500).val_size, 4_000) == 2500
