"""CUDA-only behaviour: CUDA graph capture and replay (skipped without a GPU)."""

import pytest
import torch

import fastadv
from fastadv import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_step_loop_in_a_cuda_graph(device_backend):
    device, _ = device_backend
    if device.type != "cuda":
        pytest.skip("CUDA backends only")
    x_nat = torch.rand(8, 3, 16, 16, device=device)
    w = torch.randn(3, 16, 16, device=device)
    x_adv = torch.empty_like(x_nat)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (Triton compiles) outside the capture
        fastadv.random_init_(x_adv, x_nat, eps=0.03)
        fastadv.pgd_(x_adv, torch.cos(x_adv * w), x_nat, eps=0.03, alpha=0.01)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastadv.random_init_(x_adv, x_nat, eps=0.03)
        for _ in range(3):
            fastadv.pgd_(x_adv, torch.cos(x_adv * w), x_nat, eps=0.03, alpha=0.01)
    starts = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        starts.append(x_adv.clone())
    assert not torch.equal(starts[0], starts[1]), "each replay must draw a new random start"
    assert ((starts[1] - x_nat).abs() <= 0.03 + 1e-6).all()


def test_cpu_and_cuda_agree(device_backend):
    device, _ = device_backend
    if device.type != "cuda":
        pytest.skip("CUDA backends only")
    x_nat = torch.rand(4, 3, 8, 8)
    x_adv = (x_nat + 0.05 * torch.randn_like(x_nat)).clamp(0, 1)
    grad = torch.randn_like(x_nat)
    expected = reference.linf_step(x_adv, grad, x_nat, 0.03, 0.01, 0.0, 1.0)
    out = fastadv.pgd_(x_adv.to(device), grad.to(device), x_nat.to(device), eps=0.03, alpha=0.01)
    assert torch.equal(out.cpu(), expected)


def _digits_on_cuda():
    from digits_model import train_digits_cnn

    model, x, y = train_digits_cnn(epochs=5)
    return model.cuda(), x.cuda(), y.cuda()


def test_graphed_pgd_matches_eager_strength_and_recaptures():
    model, x, y = _digits_on_cuda()
    eager = fastadv.pgd(model, x, y, eps=0.1, alpha=0.025, steps=10, restarts=2)
    graphed = fastadv.pgd(model, x, y, eps=0.1, alpha=0.025, steps=10, restarts=2,
                          cuda_graph=True)
    assert ((graphed >= x - 0.1) & (graphed <= x + 0.1) & (graphed >= 0) & (graphed <= 1)).all()
    with torch.no_grad():
        acc_eager = (model(eager).argmax(1) == y).float().mean().item()
        acc_graphed = (model(graphed).argmax(1) == y).float().mean().item()
    assert abs(acc_eager - acc_graphed) <= 0.02
    atk = fastadv.GraphedPGD(model, eps=0.1, alpha=0.025, steps=5)
    first, _, _ = atk(x[:64], y[:64])
    second, _, _ = atk(x[:64], y[:64])
    assert not torch.equal(first, second)  # fresh random start per replay
    odd, loss, fooled = atk(x[:37], y[:37])  # a new shape: a new capture
    assert odd.shape == x[:37].shape and loss.shape == (37,) and fooled.dtype == torch.bool
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
