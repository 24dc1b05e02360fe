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
    first, _, _ = atk(x[:64], y[:64])  # eager: a shape is captured when seen again
    assert not atk._graphs
    second, _, _ = atk(x[:64], y[:64])  # captured and replayed
    third, _, _ = atk(x[:64], y[:64])  # replayed
    assert len(atk._graphs) == 1
    assert not torch.equal(second, third)  # fresh random start per replay
    odd, loss, fooled = atk(x[:37], y[:37])  # a one-off shape runs eagerly
    assert odd.shape == x[:37].shape and loss.shape == (37,) and fooled.dtype == torch.bool
    assert len(atk._graphs) == 1
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_graph_cache_follows_the_model_mode_and_lets_the_model_go():
    import gc
    import weakref

    from fastadv.attacks import graphed

    model, x, y = _digits_on_cuda()
    for _ in range(2):  # the second call of a shape captures it
        fastadv.pgd(model, x[:32], y[:32], eps=0.1, alpha=0.025, steps=3, cuda_graph=True)
        fastadv.pgd(model, x[:32], y[:32], eps=0.1, alpha=0.025, steps=3, cuda_graph=True,
                    eval_mode=False)  # train mode: its own graph, not the eval one
    modes = {key[0][-1] for key in graphed._CACHE[model]}
    assert modes == {False, True}
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the cache does not keep the model (or its graphs) alive


def test_triton_launches_on_the_tensors_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x_nat = torch.rand(4, 3, 8, 8, device="cuda:1")
    x_adv, grad = x_nat.clone(), torch.randn_like(x_nat)
    expected = reference.linf_step(x_adv, grad, x_nat, 0.03, 0.01, 0.0, 1.0)
    with torch.cuda.device(0):
        fastadv.pgd_(x_adv, grad, x_nat, eps=0.03, alpha=0.01)
    assert torch.equal(x_adv, expected)


def test_delta_loop_in_a_cuda_graph(device_backend):
    """The perturbation form with per-channel eps, captured and replayed: each replay a new
    start, every delta in its box."""
    device, _ = device_backend
    if device.type != "cuda":
        pytest.skip("CUDA backends only")
    x = torch.rand(8, 3, 16, 16, device=device)
    w = torch.randn(3, 16, 16, device=device)
    eps = torch.tensor([0.02, 0.03, 0.04], device=device).view(3, 1, 1)
    delta = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        fastadv.random_delta_(delta, x, eps=eps)
        fastadv.pgd_delta_(delta, torch.cos((x + delta) * w), x, eps=eps, alpha=eps / 4)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastadv.random_delta_(delta, x, eps=eps)
        for _ in range(3):
            fastadv.pgd_delta_(delta, torch.cos((x + delta) * w), x, eps=eps, alpha=eps / 4)
    starts = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        starts.append(delta.clone())
    assert not torch.equal(starts[0], starts[1])
    assert (starts[1].abs() <= eps).all() and ((x + starts[1]) >= 0).all()
    assert ((x + starts[1]) <= 1).all()
