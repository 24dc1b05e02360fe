"""pytest-benchmark cases of the training suite (``pytest benchmarks --benchmark-enable``);
in the ordinary test run each trains the quick case once and checks what it produced."""

import pytest
import torch

from fastadv.data import load_dataset

from .conftest import DEVICES
from .train import fastadv_levels, plain_loop, run_trainer

DEVICE = DEVICES[-1]
PLAIN_LEVELS = {"plain-loop": {}, "plain-loop-fused-op": {"fused_op": True},
                "plain-loop-input-grad-only": {"input_grad_only": True}}


@pytest.mark.parametrize("level", list(PLAIN_LEVELS))
def test_plain_loop_epoch(benchmark, train_case, level):
    data = load_dataset("synthetic", synthetic_train=train_case["images"], synthetic_test=1)
    model, seconds = benchmark.pedantic(
        plain_loop, args=(train_case["model_name"], data.x_train, data.y_train),
        kwargs=dict(mean=data.mean, std=data.std, batch=train_case["batch"], epochs=1,
                    steps=train_case["steps"], device=DEVICE, **PLAIN_LEVELS[level]),
        rounds=1, iterations=1)
    assert len(seconds) == 1 and seconds[0] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("level", list(fastadv_levels(DEVICE, compile_on_cpu=False)))
def test_trainer_epoch(benchmark, train_case, level):
    options = fastadv_levels(DEVICE, compile_on_cpu=False)[level]
    metrics, model = benchmark.pedantic(
        run_trainer, args=(train_case["model_name"],),
        kwargs=dict(images=train_case["images"], test_images=16, batch=train_case["batch"],
                    epochs=1, steps=train_case["steps"], device=DEVICE, options=options),
        rounds=1, iterations=1)
    assert [m["epoch"] for m in metrics] == [1] and metrics[0]["images_per_s"] > 0
    assert metrics[0]["step"] == train_case["images"] // train_case["batch"]
    assert model(torch.rand(2, 3, 32, 32, device=DEVICE)).shape == (2, 10)
