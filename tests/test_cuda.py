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
