"""fastadv.fit: the caller's model on the caller's data (tensors, a Dataset, a DataLoader),
through the trainer's own loop. The streamed path must take exactly the batches the
in-memory path takes, and a random per-item transform must not depend on the workers."""

import json
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import fastadv
from fastadv.data import load_dataset
from fastadv.train import TrainConfigError


def digits_tensors(n=400):
    data = load_dataset("digits")
    return data.x_train[:n], data.y_train[:n], data.x_test[:120], data.y_test[:120]


def small_net(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(256, num_classes))


COMMON = dict(eps=0.1, epochs=2, steps=2, eval_steps=2, batch_size=32, optimizer="adam",
              lr=1e-2, weight_decay=0.0, schedule="constant", progress=False, eval_examples=64)


def state(path):
    return torch.load(path, weights_only=True)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_fit_on_tensors_trains_and_returns_the_best_model(tmp_path):
    x, y, xt, yt = digits_tensors()
    result = fastadv.fit(small_net(), (x, y), test_data=(xt, yt), out=str(tmp_path / "run"),
                         **COMMON)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert {"val_robust_acc", "train_robust_acc", "images_per_s"} <= set(result.history[-1])
    rows = {r["checkpoint"]: r for r in result.summary["checkpoints"]}
    assert result.summary["split"] == "test" and result.summary["test_examples"] == 120
    assert rows["best"]["test_clean_acc"] > 0.3  # it learned something in two epochs
    assert not result.model.training
    best = state(tmp_path / "run" / "best.pt")
    assert same(best, {k: v for k, v in result.model.state_dict().items()})
    # The checkpoint holds weights only: load_model says how to read it.
    with pytest.raises(ValueError, match="load_weights"):
        fastadv.load_model(str(tmp_path / "run" / "best.pt"))
    again = fastadv.load_weights(small_net(), str(tmp_path / "run" / "best.pt"))
    assert same(again.state_dict(), best)


def test_streamed_dataset_takes_the_same_batches_as_tensors(tmp_path):
    """A TensorDataset streamed through a DataLoader (2 workers) ends with exactly the
    weights and figures of the same tensors held in memory."""
    x, y, xt, yt = digits_tensors()
    a = fastadv.fit(small_net(), (x, y), test_data=(xt, yt), out=str(tmp_path / "a"), **COMMON)
    b = fastadv.fit(small_net(), TensorDataset(x, y), test_data=TensorDataset(xt, yt),
                    workers=2, out=str(tmp_path / "b"), **COMMON)
    assert same(state(tmp_path / "a" / "last.pt"), state(tmp_path / "b" / "last.pt"))
    drop = ("seconds", "images_per_s", "eval_seconds")
    assert ([{k: v for k, v in r.items() if k not in drop} for r in a.history]
            == [{k: v for k, v in r.items() if k not in drop} for r in b.history])
    assert a.summary["checkpoints"] == b.summary["checkpoints"]


class NoisyDigits(Dataset):
    """A dataset with a random transform of its own (noise from torch's generator)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i] + 0.05 * torch.rand_like(self.x[i])).clamp(0, 1), int(self.y[i])


def test_random_transforms_do_not_depend_on_the_workers(tmp_path):
    x, y, _, _ = digits_tensors(300)
    runs = []
    for workers in (0, 2):
        out = str(tmp_path / f"w{workers}")
        fastadv.fit(small_net(), NoisyDigits(x, y), workers=workers, out=out,
                    **{**COMMON, "epochs": 1})
        runs.append(state(os.path.join(out, "last.pt")))
    assert same(*runs)


def test_dataloader_is_used_with_its_own_sampler_and_batch_size(tmp_path):
    x, y, xt, yt = digits_tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True, num_workers=0)
    out = str(tmp_path / "run")
    result = fastadv.fit(small_net(), loader, val_data=(xt, yt), out=out,
                         **{**COMMON, "batch_size": 999})
    assert result.history[-1]["step"] == 2 * (400 // 50)  # the loader's batch size
    assert result.summary["split"] == "val"  # no test_data: reported on validation
    # Its order is drawn from (seed, epoch): a second run repeats it exactly.
    fastadv.fit(small_net(), loader, val_data=(xt, yt), out=str(tmp_path / "again"),
                **{**COMMON, "batch_size": 999})
    assert same(state(os.path.join(out, "last.pt")), state(tmp_path / "again" / "last.pt"))


def test_mean_std_wrap_the_model_and_resume_continues(tmp_path):
    x, y, _, _ = digits_tensors(200)
    out = str(tmp_path / "run")
    kwargs = dict(COMMON, epochs=1, mean=(0.3,), std=(0.4,))
    fastadv.fit(small_net(), (x, y), out=out, **kwargs)
    with pytest.raises(TrainConfigError, match="already holds a run"):
        fastadv.fit(small_net(), (x, y), out=out, **kwargs)
    with pytest.raises(TrainConfigError, match="--epochs 1 -> 2"):
        fastadv.fit(small_net(), (x, y), out=out, resume=True, **dict(kwargs, epochs=2))
    result = fastadv.fit(small_net(), (x, y), out=out, resume=True, **kwargs)  # finished
    assert [r["epoch"] for r in result.history] == [1]
    assert type(result.model).__name__ == "Normalized"
    assert torch.equal(result.model.normalize.std.flatten(), torch.tensor([0.4]))


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1, 8, 8), 0


@pytest.mark.parametrize("make, message", [
    (lambda x, y: (x * 2 - 1, y), r"\[0, 1\]"),  # normalised inputs
    (lambda x, y: (x[:, 0], y), r"x must be a float tensor \[N, C, H, W\]"),
    (lambda x, y: (x, y[:-1]), "y must be integer labels"),
    (lambda x, y: Stream(), "IterableDataset"),
    (lambda x, y: DataLoader(TensorDataset(x, y), batch_size=8), "val_data is needed"),
    (lambda x, y: [1, 2, 3], "must be a pair of tensors"),
])
def test_bad_data_is_refused_before_anything_is_written(tmp_path, make, message):
    x, y, _, _ = digits_tensors(100)
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError, match=message):
        fastadv.fit(small_net(), make(x, y), out=str(out), **COMMON)
    assert not out.exists()


@pytest.mark.parametrize("model, message", [
    (small_net(num_classes=5), "num_classes=10"),  # too few logits for the labels
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Unflatten(1, (2, 5))),
     r"logits \[B, num_classes\]"),
    (nn.Linear(3, 10), "fails on a training batch"),
])
def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path, model, message):
    x, y, _, _ = digits_tensors(100)
    with pytest.raises(TrainConfigError, match=message):
        fastadv.fit(model, (x, y), out=str(tmp_path / "run"), **COMMON)
    assert not (tmp_path / "run").exists()


def test_optimizer_factory_and_bad_values(tmp_path):
    x, y, _, _ = digits_tensors(100)
    result = fastadv.fit(small_net(), (x, y), out=str(tmp_path / "run"),
                         **{**COMMON, "epochs": 1,
                            "optimizer": lambda p: torch.optim.SGD(p, lr=0.05)})
    assert result.history[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(TrainConfigError, match="--eps must lie in"):
        fastadv.fit(small_net(), (x, y), out=str(tmp_path / "bad"), **{**COMMON, "eps": 3.0})
    with pytest.raises(TrainConfigError, match="optimizer must be"):
        fastadv.fit(small_net(), (x, y), out=str(tmp_path / "bad"),
                    **{**COMMON, "optimizer": "rmsprop"})


def test_any_seed_streams_and_changed_settings_are_refused_on_resume(tmp_path):
    """Seeds beyond 32 bits work on the streamed path (item seeds wrap in 64 bits); a
    resume with other augmentation or normalisation is refused (it would train on other
    inputs, or load the saved statistics over the new ones)."""
    x, y, _, _ = digits_tensors(200)
    out = str(tmp_path / "run")
    kwargs = dict(COMMON, epochs=1, seed=31337, mean=(0.3,), std=(0.4,))
    fastadv.fit(small_net(), TensorDataset(x, y), out=out, **kwargs)
    for change in ({"augment": True}, {"std": (0.5,)}):
        with pytest.raises(TrainConfigError, match="other data or settings"):
            fastadv.fit(small_net(), TensorDataset(x, y), out=out, resume=True,
                        **{**kwargs, **change})
    fastadv.fit(small_net(), TensorDataset(x, y), out=out, resume=True, **kwargs)


def test_eval_cli_says_how_to_evaluate_a_fit_checkpoint(tmp_path, capsys):
    from fastadv.eval.cli import main as eval_main

    x, y, _, _ = digits_tensors(100)
    out = str(tmp_path / "run")
    fastadv.fit(small_net(), (x, y), out=out, **dict(COMMON, epochs=1))
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--checkpoint", os.path.join(out, "best.pt")])
    assert exit_info.value.code == 2
    assert "fastadv.load_weights" in capsys.readouterr().err
