"""pytest-benchmark cases of the training suite (``pytest benchmarks --benchmark-enable``);
in the ordinary test run each trains one tiny epoch once and checks that it learned."""

import pytest
import torch

from fastadv.data import synthetic

from .train import fastadv_levels, plain_loop, run_trainer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGES, BATCH, STEPS = (4096, 512, 10) if DEVICE.type == "cuda" else (128, 32, 2)


@pytest.mark.parametrize("fused_op", [False, True], ids=["plain-loop", "plain-loop-fused-op"])
def test_plain_loop_epoch(benchmark, fused_op):
    x, y = synthetic(IMAGES, (3, 32, 32), seed=1)
    model, seconds = benchmark.pedantic(
        plain_loop, args=("small-cnn", x, y),
        kwargs=dict(batch=BATCH, epochs=1, steps=STEPS, device=DEVICE, fused_op=fused_op),
        rounds=1, iterations=1)
    assert len(seconds) == 1 and seconds[0] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("level", list(fastadv_levels(DEVICE, compile_on_cpu=False)))
def test_trainer_epoch(benchmark, level):
    options = fastadv_levels(DEVICE, compile_on_cpu=False)[level]
    last, model = benchmark.pedantic(
        run_trainer, args=("small-cnn",),
        kwargs=dict(images=IMAGES, test_images=16, batch=BATCH, epochs=1, steps=STEPS,
                    device=DEVICE, options=options), rounds=1, iterations=1)
    assert last["epoch"] == 1 and last["images_per_s"] > 0
    assert last["step"] == IMAGES // BATCH
    assert model(torch.rand(2, 3, 32, 32, device=DEVICE)).shape == (2, 10)
