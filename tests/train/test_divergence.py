"""No NaN model is kept: a non-finite loss or non-finite weights stop the run where they
appear (exit 2, or 3 under --strict), naming the epoch, the batch, the likely cause and the
last finite checkpoint, which stays intact; best.pt and last.pt never hold non-finite
weights; metrics.jsonl is strict JSON; evaluation refuses a model with NaN weights or NaN
logits; the final report flags robust accuracy above clean accuracy; fit refuses NaN
pixels and names negative labels."""

import json
import math
import os

import pytest
import torch
from torch import nn

import fastadv
from fastadv._io import json_record
from fastadv.checkpoint import load_checkpoint
from fastadv.errors import TrainConfigError
from fastadv.train.divergence import TrainingDiverged
from fastadv.train.report import summary_table
from test_fit import COMMON, digits_tensors, small_net
from test_train import run_cli

FAST = ["--dataset", "digits", "--width", "1", "--epochs", "2", "--batch-size", "64",
        "--steps", "1", "--eval-steps", "1", "--eval-examples", "32", "--no-progress"]


def strict_json_lines(path):
    def refuse(token):
        raise ValueError(f"bare {token} in {path}")
    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def all_finite(path):
    return all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path)["model"].values()
               if t.is_floating_point())


@pytest.mark.parametrize("strict", [False, True])
def test_a_huge_learning_rate_stops_the_run_at_its_first_nan(tmp_path, strict):
    out = str(tmp_path / "run")
    result = run_cli(*FAST, "--optimizer", "sgd", "--lr", "1e12", "--out", out,
                     *(["--strict"] if strict else []))
    assert result.returncode == (3 if strict else 2), result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "training diverged: the training loss became NaN at epoch 1, batch" in line
    assert "--lr 1e+12" in line and "no checkpoint was written before it" in line
    assert not os.path.exists(os.path.join(out, "best.pt"))
    assert not os.path.exists(os.path.join(out, "last.pt"))
    strict_json_lines(os.path.join(out, "metrics.jsonl"))
    # Nothing of it was kept: the same command with a sane rate starts again in that folder.
    result = run_cli(*FAST, "--epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr


class TurnsNaN(nn.Module):
    """small_net whose logits become NaN after ``after`` forwards of training steps (in
    training mode, with gradients on, not through the input as an attack's are)."""

    def __init__(self, after):
        super().__init__()
        self.net, self.after, self.calls = small_net(), after, 0

    def forward(self, x):
        out = self.net(x)
        if self.training and torch.is_grad_enabled() and not x.requires_grad:
            self.calls += 1
            if self.calls > self.after:
                return out * math.nan
        return out


class Times(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_the_last_finite_checkpoint_stays_intact(tmp_path):
    x, y, _, _ = digits_tensors(200)
    out = str(tmp_path / "run")
    # 180 training examples in batches of 32: 5 batches an epoch: NaN in epoch 2, batch 3.
    model = TurnsNaN(after=7)
    with pytest.raises(TrainingDiverged) as info:
        fastadv.fit(model, (x, y), out=out, **dict(COMMON, epochs=3))
    message = str(info.value)
    assert "at epoch 2, batch 3 of 5" in message
    assert f"the last finite checkpoint is {os.path.join(out, 'last.pt')} (intact (1 epoch " \
        "done))" in message
    for name in ("last.pt", "best.pt"):
        path = os.path.join(out, name)
        assert load_checkpoint(path)["progress"]["epoch"] == 1 and all_finite(path)
    strict_json_lines(os.path.join(out, "metrics.jsonl"))


def test_fit_with_a_huge_learning_rate_or_a_nan_model_raises(tmp_path):
    x, y, _, _ = digits_tensors(200)
    with pytest.raises(TrainingDiverged, match="lr 1e\\+30"):
        fastadv.fit(small_net(), (x, y), out=str(tmp_path / "a"),
                    **dict(COMMON, optimizer="sgd", lr=1e30))
    with pytest.raises(TrainingDiverged, match="epoch 1, batch 1 of"):
        fastadv.fit(TurnsNaN(after=0), (x, y), out=str(tmp_path / "b"), **COMMON)


def test_metrics_lines_are_strict_json_with_a_reason_for_each_null():
    line = json_record({"epoch": 1, "loss": math.nan, "parts": {"kl": math.inf}, "acc": 0.5})
    record = json.loads(line, parse_constant=lambda t: pytest.fail(f"bare {t}"))
    assert record["loss"] is None and record["parts"]["kl"] is None and record["acc"] == 0.5
    assert record["null_reason"] == {"loss": "the value was nan",
                                     "parts.kl": "the value was inf"}


def test_evaluation_refuses_nan_weights_and_nan_logits(tmp_path):
    out = str(tmp_path / "run")
    assert run_cli(*FAST, "--epochs", "1", "--out", out).returncode == 0
    ckpt = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    name = next(k for k, t in ckpt["model"].items() if t.is_floating_point())
    ckpt["model"][name][...] = math.nan
    ckpt.pop("sha256")
    from fastadv.checkpoint import save_checked
    save_checked(ckpt, str(tmp_path / "nan.pt"))
    with pytest.raises(ValueError, match="NaN or infinite values"):
        fastadv.load_model(str(tmp_path / "nan.pt"))
    _, _, x, y = digits_tensors()
    clean = r"NaN or infinite logits on 16 of 16 inputs \(clean images\)"
    with pytest.raises(ValueError, match=clean):
        fastadv.evaluate(nn.Sequential(small_net(), Times(math.nan)), x[:16], y[:16], eps=0.1,
                         attacks=("fgsm",), sanity_runs=False, curve=False, progress=False)


def test_the_report_flags_robust_accuracy_above_clean_accuracy():
    summary = {"method": "pgd", "model": "m", "dataset": "d", "eps": 0.1, "epochs": 1,
               "epochs_completed": 1, "train_seconds": 1.0, "eval_seconds": 1.0,
               "split": "test", "test_examples": 10, "attack": "PGD-1",
               "checkpoints": [{"checkpoint": "best", "epoch": 1, "test_clean_acc": 0.2,
                                "test_robust_acc": 0.3}], "impossible": ["best"]}
    assert "warning: impossible result for best.pt: robust accuracy above clean" in \
        summary_table(summary)


def test_fit_refuses_nan_pixels_and_names_negative_labels(tmp_path):
    x, y, _, _ = digits_tensors(200)
    bad = x.clone()
    bad[3, 0, 2, 2] = math.nan
    with pytest.raises(TrainConfigError, match="1 of .* pixel values are NaN or infinite"):
        fastadv.fit(small_net(), (bad, y), out=str(tmp_path / "a"), **COMMON)
    labels = y.clone()
    labels[:2] = -1
    with pytest.raises(TrainConfigError, match="found 2 negative \\(the lowest -1\\)"):
        fastadv.fit(small_net(), (x, labels), out=str(tmp_path / "b"), **COMMON)
