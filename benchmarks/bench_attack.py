"""pytest-benchmark cases of the attack suite (``pytest benchmarks --benchmark-enable``); in
the ordinary test run each executes once."""

import pytest
import torch

from .attack import eval_implementations, fit, implementations, make_model, synthetic_cifar

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = 512 if DEVICE.type == "cuda" else 16


@pytest.fixture(scope="module")
def setup():
    x_train, y_train = synthetic_cifar(512, DEVICE, seed=1)
    model = fit(make_model("small-cnn", DEVICE), x_train, y_train, steps=10)
    x, y = synthetic_cifar(BATCH, DEVICE, seed=2)
    return model, x, y


IMPLS = list(implementations(torch.nn.Linear(1, 1), 10, DEVICE))


@pytest.mark.parametrize("impl", IMPLS)
def test_attack(benchmark, setup, impl):
    model, x, y = setup
    attack = implementations(model, 10, DEVICE)[impl]
    x_adv = benchmark(attack, x, y)
    assert x_adv.shape == x.shape
    assert ((x_adv >= x - 8 / 255 - 1e-6) & (x_adv <= x + 8 / 255 + 1e-6)).all()


EVAL_IMPLS = list(eval_implementations(torch.nn.Linear(1, 1), 5, 2, DEVICE, BATCH))


@pytest.mark.parametrize("impl", EVAL_IMPLS)
def test_evaluation_attack(benchmark, setup, impl):
    """PGD-k x R restarts (tiny here), worst case per example: every implementation's points
    lie in the ball and the valid range."""
    model, x, y = setup
    attack = eval_implementations(model, 5, 2, DEVICE, BATCH)[impl]
    x_adv = benchmark(attack, x, y)
    assert ((x_adv >= x - 8 / 255 - 1e-6) & (x_adv <= x + 8 / 255 + 1e-6)).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
