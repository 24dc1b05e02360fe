"""pytest-benchmark cases of the attack suite (``pytest benchmarks --benchmark-enable``); in
the ordinary test run each executes once, on the quick case."""

import pytest
import torch

from .attack import eval_implementations, fit, implementations, make_model, synthetic_cifar
from .conftest import DEVICES

DEVICE = DEVICES[-1]
EPS = 8 / 255


@pytest.fixture(scope="module")
def setup(attack_case):
    x_train, y_train = synthetic_cifar(2048, DEVICE, seed=1)
    model = fit(make_model(attack_case["model_name"], DEVICE), x_train, y_train)
    x, y = synthetic_cifar(attack_case["batch"], DEVICE, seed=2)
    return attack_case, model, x, y


def in_ball(x_adv, x):
    return bool(((x_adv >= x - EPS - 1e-6) & (x_adv <= x + EPS + 1e-6)
                 & (x_adv >= 0) & (x_adv <= 1)).all())


@pytest.mark.parametrize("impl", list(implementations(torch.nn.Linear(1, 1), 10, DEVICE)))
def test_attack(benchmark, setup, impl):
    case, model, x, y = setup
    attack = implementations(model, case["steps"], DEVICE)[impl]
    x_adv = benchmark(attack, x, y)
    assert x_adv.shape == x.shape and in_ball(x_adv, x)


EVAL_IMPLS = list(eval_implementations(torch.nn.Linear(1, 1), 5, "R", DEVICE, 1))


@pytest.mark.parametrize("position", range(len(EVAL_IMPLS)), ids=EVAL_IMPLS)
def test_evaluation_attack(benchmark, setup, position):
    """PGD-k x R restarts, worst case per example: every implementation's points lie in the
    ball and the valid range."""
    case, model, x, y = setup
    if not case["eval_restarts"]:
        pytest.skip(f"the suite runs no evaluation attack on {case['model_name']} here")
    attack = list(eval_implementations(model, case["eval_steps"], case["eval_restarts"], DEVICE,
                                       case["max_batch"]).values())[position]
    x_adv = benchmark(attack, x, y)
    assert in_ball(x_adv, x)
