"""fastadv under torch.compile: an attack loop compiles whole (no graph break)
and matches eager; on CUDA the Triton step is traced into the graph
(torch.library.triton_op / wrap_triton) instead of staying an opaque op, also in
CUDA-graph-trees mode."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadv



def _model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).to(device).eval().requires_grad_(False)


def _attack(model, x_nat, y, steps: int):
    """The torchattacks-style loop with the fused step: input gradients only."""
    x_adv = x_nat.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
        fastadv.pgd_(x_adv, grad, x_nat, eps=8 / 255, alpha=2 / 255)
    return x_adv


def _attack_func_grad(model, x_nat, y, steps: int):
    """The same loop with the input gradient from torch.func.grad: the form that compiles
    whole on every supported torch (2.11's Dynamo refuses x.requires_grad_())."""
    input_grad = torch.func.grad(lambda x: F.cross_entropy(model(x), y))
    x_adv = x_nat.clone()
    for _ in range(steps):
        fastadv.pgd_(x_adv, input_grad(x_adv), x_nat, eps=8 / 255, alpha=2 / 255)
    return x_adv


def _dynamo_takes_requires_grad_() -> bool:
    """Whether this torch's Dynamo compiles x.requires_grad_() on a tensor made inside the
    compiled function (2.11's does not; 2.14's does)."""
    def fn(x):
        y = x.clone()
        y.requires_grad_(True)
        return y.detach()

    torch._dynamo.reset()
    try:
        torch.compile(fn, fullgraph=True, backend="eager")(torch.ones(2))
    except torch._dynamo.exc.Unsupported:
        return False
    finally:
        torch._dynamo.reset()
    return True


LOOPS = [pytest.param(_attack_func_grad, id="func-grad"),
         pytest.param(_attack, id="requires-grad", marks=pytest.mark.skipif(
             "not _dynamo_takes_requires_grad_()",
             reason="this torch's Dynamo refuses Tensor.requires_grad_() in a compiled function "
                    "(torch 2.11); the func-grad loop compiles whole"))]


def _inputs(device):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 6, 6, generator=gen).to(device)
    y = torch.randint(0, 5, (3,), generator=gen).to(device)
    return x, y


@pytest.mark.parametrize("attack", LOOPS)
def test_attack_loop_compiles_fullgraph_and_matches_eager(attack):
    """On the CPU the step is the opaque op (C++ kernel): it must not break the graph."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _model("cpu")
    x, y = _inputs("cpu")
    eager = attack(model, x, y, 3)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(attack, fullgraph=True, dynamic=False)(model, x, y, 3)
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


# The trace runs in a process without TRITON_INTERPRET (this one has it: its @triton.jit
# kernels are interpreter objects, which wrap_triton cannot trace), on fake CUDA tensors.
_TRACE = r"""
import sys, torch, fastadv
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx

device, per_example = sys.argv[1], sys.argv[2] == "1"
def step(x, g, n, e):
    fastadv.pgd_(x, g, n, eps=e if per_example else 8 / 255, alpha=2 / 255)
    return x
with FakeTensorMode():
    x = torch.empty(4, 3, 8, 8, device=device)
    g, n, e = torch.empty_like(x), torch.empty_like(x), torch.full((4,), 0.03, device=device)
print(make_fx(dispatch_functionalize(step), tracing_mode="fake")(x, g, n, e).code)
"""


def _traced_graph(device: str, per_example: bool = False, backend: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTADV_BACKEND")}
    if backend:
        env["FASTADV_BACKEND"] = backend
    proc = subprocess.run([sys.executable, "-c", _TRACE, device, str(int(per_example))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


needs_traceable_triton = pytest.mark.skipif(
    not hasattr(torch.library, "triton_op") or fastadv.backends.triton_error() is not None,
    reason="needs torch >= 2.6 (torch.library.triton_op) and Triton")


@needs_traceable_triton
@pytest.mark.parametrize("per_example", [False, True], ids=["float-eps", "tensor-eps"])
def test_triton_step_is_traced_not_opaque(per_example):
    graph = _traced_graph("cuda", per_example)
    assert "triton_kernel_wrapper_functional" in graph, graph
    assert "fastadv.pgd_" not in graph, graph


@needs_traceable_triton
def test_cpp_kernels_and_a_forced_backend_keep_the_opaque_op():
    for device, backend in (("cpu", ""), ("cuda", "torch")):
        graph = _traced_graph(device, backend=backend)
        assert "fastadv.pgd_" in graph, (device, backend, graph)
        assert "triton_kernel_wrapper" not in graph, (device, backend, graph)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("attack", LOOPS)
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_attack_loop_compiles_with_the_triton_step(mode, attack):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _model("cuda")
    x, y = _inputs("cuda")
    eager = attack(model, x, y, 3)
    compiled_fn = torch.compile(attack, fullgraph=True, dynamic=False, mode=mode)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for _ in range(3):  # CUDA graph trees record on the first calls, replay after
            compiled = compiled_fn(model, x, y, 3).clone()
            torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval-bn", "train-bn"])
def test_the_benchmarks_compiled_loops_trace_whole(train_mode):
    """The torch.compile baselines of the attack and training suites (BatchNorm in train mode
    in the latter) compile without a graph break, and count any they meet."""
    from benchmarks.attack import EPS, compile_cell, compiled_implementations
    from benchmarks.common import graph_breaks

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).train(train_mode)
    x, y = _inputs("cpu")
    before = graph_breaks()
    for name, run in compiled_implementations(model, steps=2).items():
        tracked = model[1].num_batches_tracked.item()
        x_adv = run(x, y)
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        # Train-mode BatchNorm updates its statistics at every step, as in the eager loop.
        assert model[1].num_batches_tracked.item() - tracked == (2 if train_mode else 0), name
        assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards
    assert graph_breaks() == before
    assert compile_cell(12.04, 0) == "12.0" and "2 graph breaks: not whole" in compile_cell(3, 2)
