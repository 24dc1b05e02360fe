"""fastadv.keep_best_: per example, a strictly higher loss replaces the kept candidate."""

import pytest
import torch

import fastadv
from helpers import DTYPES, to_layout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_keeps_strictly_better(device_backend, dtype, layout):
    device, _ = device_backend
    gen = torch.Generator().manual_seed(0)
    best_x = to_layout(torch.rand(6, 3, 5, 4, generator=gen).to(device, dtype), layout)
    x = torch.rand(6, 3, 5, 4, generator=gen).to(device, dtype)
    inf, nan = float("inf"), float("nan")
    best_loss = torch.tensor([-inf, 1.0, 2.0, 0.5, 3.0, inf], device=device)
    loss = torch.tensor([0.0, 1.0, 1.5, 0.7, nan, inf], device=device)
    take = torch.tensor([True, False, False, True, False, False], device=device)
    expected_x = torch.where(take.view(-1, 1, 1, 1), x, best_x)
    expected_loss = torch.where(take, loss, best_loss)
    out = fastadv.keep_best_(best_x, best_loss, x, loss)
    assert out[0] is best_x and out[1] is best_loss
    assert torch.equal(best_x, expected_x)
    assert torch.equal(best_loss, expected_loss)


def test_restart_reduction_over_many_candidates(device_backend):
    """Folding R candidates one by one keeps, per example, the first arg-max loss."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(1)
    candidates = torch.rand(5, 8, 2, 3, 3, generator=gen).to(device)
    losses = torch.randint(0, 4, (5, 8), generator=gen).float().to(device)  # many ties
    best_x = torch.zeros(8, 2, 3, 3, device=device)
    best_loss = torch.full((8,), -float("inf"), device=device)
    for x, loss in zip(candidates, losses):
        fastadv.keep_best_(best_x, best_loss, x, loss)
    winner = losses.argmax(dim=0)  # argmax returns the first maximum
    assert torch.equal(best_loss, losses.max(dim=0).values)
    assert torch.equal(best_x, candidates[winner, torch.arange(8, device=device)])


def test_loss_dtype_and_large_examples(device_backend):
    device, _ = device_backend
    best_x = torch.zeros(3, 3, 64, 64, device=device)
    x = torch.ones(3, 3, 64, 64, device=device)
    best_loss = torch.zeros(3, device=device, dtype=torch.bfloat16)
    fastadv.keep_best_(best_x, best_loss, x, torch.tensor([1.0, -1.0, 2.0], device=device))
    assert best_loss.dtype == torch.bfloat16
    assert best_loss.tolist() == [1.0, 0.0, 2.0]
    assert best_x[[0, 2]].eq(1).all() and best_x[1].eq(0).all()
