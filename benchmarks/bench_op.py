"""pytest-benchmark cases of the op suite (``pytest benchmarks --benchmark-enable``); in the
ordinary test run they execute once each and check the fused step against the eager one."""

import pytest
import torch

import fastadv
from fastadv import backends

from .op import EPS, ALPHA, QUICK_SHAPES, SHAPES, eager_linf_step, make_state

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(d, s) for d in DEVICES for s in QUICK_SHAPES]


@pytest.mark.parametrize("device, shape", CASES)
def test_copy(benchmark, device, shape):
    x_adv, _, _ = make_state(SHAPES[shape], device)
    dst = torch.empty_like(x_adv)
    benchmark(dst.copy_, x_adv)


@pytest.mark.parametrize("device, shape", CASES)
def test_eager_step(benchmark, device, shape):
    benchmark(eager_linf_step, *make_state(SHAPES[shape], device))


@pytest.mark.parametrize("device, shape", CASES)
def test_fused_step(benchmark, monkeypatch, device, shape):
    monkeypatch.setenv("FASTADV_BACKEND", backends.select(device))
    x_adv, grad, x_nat = make_state(SHAPES[shape], device)
    expected = eager_linf_step(x_adv, grad, x_nat)
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    # The eager formula rounds x_nat - eps the same way: results agree exactly.
    assert torch.equal(x_adv, expected)
    benchmark(fastadv.pgd_, x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
