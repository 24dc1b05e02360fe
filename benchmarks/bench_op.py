"""pytest-benchmark cases of the op suite (``pytest benchmarks --benchmark-enable``); in the
ordinary test run they execute once each and check the fused step against the eager one."""

import pytest
import torch

import fastadv
from fastadv import backends

from .op import ALPHA, EPS, SHAPES, eager_linf_step, make_state


def test_copy(benchmark, op_case):
    device, shape = op_case
    x_adv, _, _ = make_state(SHAPES[shape], device)
    dst = torch.empty_like(x_adv)
    benchmark(dst.copy_, x_adv)


def test_eager_step(benchmark, op_case):
    device, shape = op_case
    benchmark(eager_linf_step, *make_state(SHAPES[shape], device))


@pytest.mark.parametrize("backend", ["triton", "cuda", "cpp", "torch"])
def test_fused_step(benchmark, monkeypatch, op_case, backend):
    device, shape = op_case
    if backend not in backends.available(device):
        pytest.skip(f"backend {backend} is not available on {device.type}")
    monkeypatch.setenv("FASTADV_BACKEND", backend)
    x_adv, grad, x_nat = make_state(SHAPES[shape], device)
    expected = eager_linf_step(x_adv, grad, x_nat)
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    # The eager formula rounds x_nat - eps the same way: results agree exactly.
    assert torch.equal(x_adv, expected)
    benchmark(fastadv.pgd_, x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
