"""The backend an op runs on is never a silent downgrade.

On CUDA: no Triton and no CUDA C++ kernels, Triton's interpreter, or a Triton kernel that
fails to compile or launch each give one BackendWarning per process (naming the backend used,
why, and the fix) and fall back — or raise when FASTADV_BACKEND forces Triton. Without a GPU,
the choice is tested as a pure function of injected facts, ``select`` on a ``cuda`` device
object (no tensor needed), and the op-level fallback with one Triton kernel broken: on CUDA
tensors where there is a GPU, else on CPU tensors with the interpreted Triton kernels made the
preferred CPU backend.
"""

import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastadv
from fastadv import backends, ops
from fastadv.backends import BackendWarning, Choice, Facts, plan

FULL = Facts(extension_error=None, cuda_kernels=True, triton_error=None, triton_interpreted=False)
NO_TRITON = "ModuleNotFoundError: No module named 'triton'"
KERNELS = ("linf_step", "l2_step", "random_init", "keep_best")
CUDA = torch.device("cuda")  # a device object needs no GPU


def facts(**changes) -> Facts:
    return dataclasses.replace(FULL, **changes)


@pytest.fixture
def fresh(monkeypatch):
    """Forgotten choices, failures and warnings before and after; FASTADV_BACKEND unset."""
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    backends.reset()
    yield
    backends.reset()
    ops._kernel.cache_clear()


def backend_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, BackendWarning)]


# --------------------------------------------------------------------------- the pure choice


def test_cuda_prefers_triton_then_cuda_kernels_silently():
    assert plan("cuda", "linf_step", None, FULL) == Choice("triton")
    # Triton not installed, CUDA C++ built: full speed, nothing to say.
    assert plan("cuda", "linf_step", None, facts(triton_error=NO_TRITON)) == Choice("cuda")


def test_reference_on_cuda_says_why_and_how_to_fix():  # (a)
    choice = plan("cuda", "linf_step", None, facts(triton_error=NO_TRITON, cuda_kernels=False))
    assert choice.backend == "torch"
    for part in ("'torch'", "PyTorch reference", f"Triton is unavailable ({NO_TRITON})",
                 "fastadv._C was built without CUDA kernels", "pip install triton",
                 "FASTADV_BUILD_CUDA=1 pip install --no-build-isolation -e ."):
        assert part in choice.warning
    no_ext = facts(triton_error=NO_TRITON, cuda_kernels=False, extension_error="ImportError: x.so")
    assert "fastadv._C did not load (ImportError: x.so)" in plan("cuda", None, None, no_ext).warning


@pytest.mark.parametrize("cuda_kernels, backend", [(True, "cuda"), (False, "torch")])
def test_interpreter_never_runs_cuda_tensors(cuda_kernels, backend):  # (c)
    interpreted = facts(triton_interpreted=True, cuda_kernels=cuda_kernels)
    choice = plan("cuda", "linf_step", None, interpreted)
    assert choice.backend == backend
    assert f"'{backend}'" in choice.warning and "TRITON_INTERPRET=1" in choice.warning
    assert "unset TRITON_INTERPRET" in choice.warning
    with pytest.raises(RuntimeError, match=r"FASTADV_BACKEND=triton cannot run on cuda tensors "
                                           r"here \(TRITON_INTERPRET=1"):
        plan("cuda", "linf_step", "triton", interpreted)
    # CPU tensors run the interpreted kernels when forced (that is how the tests run them).
    assert plan("cpu", "linf_step", "triton", interpreted) == Choice("triton")


@pytest.mark.parametrize("cuda_kernels, backend", [(True, "cuda"), (False, "torch")])
def test_failed_triton_kernel_falls_back_for_that_kernel_only(cuda_kernels, backend):  # (b)
    failed = facts(cuda_kernels=cuda_kernels,
                   triton_failures={("cuda", "linf_step"): "CompilationError: boom"})
    choice = plan("cuda", "linf_step", None, failed)
    assert choice.backend == backend
    assert "linf_step" in choice.warning and "CompilationError: boom" in choice.warning
    assert plan("cuda", "l2_step", None, failed) == Choice("triton")
    # Forced, Triton runs again (and its error is raised: see the op-level test).
    assert plan("cuda", "linf_step", "triton", failed) == Choice("triton")


def test_cpu_choice_is_quiet():
    assert plan("cpu", "linf_step", None, FULL) == Choice("cpp")
    assert plan("cpu", "linf_step", None, facts(extension_error="ImportError: x")) == Choice("torch")


# --------------------------------------------------------------------------- select: once, cached


def inject(monkeypatch, injected: Facts) -> list:
    """backends.facts() returns `injected` plus the failures recorded so far; returns the
    list that grows by one per call (per uncached choice)."""
    calls = []

    def fake():
        calls.append(1)
        return dataclasses.replace(injected, triton_failures=dict(backends._triton_failures))
    monkeypatch.setattr(backends, "facts", fake)
    return calls


def test_select_warns_once_per_cause_and_caches(monkeypatch, fresh):
    calls = inject(monkeypatch, facts(triton_interpreted=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once-only is fastadv's, not the warnings filter's
        for _ in range(3):
            for kernel in (*KERNELS, None):
                assert backends.select(CUDA, kernel) == "cuda"
        assert backends.select("cuda:0", "linf_step") == "cuda"
    assert len(backend_warnings(caught)) == 1
    assert len(calls) == len(KERNELS) + 1  # one choice per kernel, then dictionary hits


def test_select_remembers_a_triton_failure(monkeypatch, fresh):
    inject(monkeypatch, FULL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.select(CUDA, "linf_step") == "triton"
        backends.triton_failed(CUDA, "linf_step", RuntimeError("ptxas fatal\n  bad"))
        assert [backends.select(CUDA, "linf_step") for _ in range(3)] == ["cuda"] * 3
        assert backends.select(CUDA, "l2_step") == "triton"
    [message] = backend_warnings(caught)
    assert "linf_step on cuda tensors uses the 'cuda' backend" in message
    assert "RuntimeError: ptxas fatal bad" in message


# --------------------------------------------------------------------------- the real install


SELECT_ON_CUDA = """
import sys, warnings
for blocked in {blocked!r}:
    sys.modules[blocked] = None
import torch
from fastadv import backends
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    uses = {{backends.select(torch.device("cuda"), k) for k in ("linf_step", "l2_step")}}
found = [str(w.message) for w in caught if issubclass(w.category, backends.BackendWarning)]
print("USES", *uses)
print("WARNINGS", len(found))
print("MESSAGE", *found)
"""


def select_on_cuda(blocked=(), **env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"} | env
    result = subprocess.run([sys.executable, "-c", SELECT_ON_CUDA.format(blocked=blocked)],
                            capture_output=True, text=True, env=full_env, timeout=300)
    assert result.returncode == 0, result.stderr
    return {key: value for key, _, value in (line.partition(" ") for line in result.stdout.splitlines())}


def test_interpreted_install_keeps_cuda_tensors_off_the_interpreter():  # (c), for real
    if backends.triton_error() is not None:
        pytest.skip(f"Triton unavailable: {backends.triton_error()}")
    out = select_on_cuda(TRITON_INTERPRET="1")
    expected = "cuda" if backends.has_cuda_kernels() else "torch"
    assert out["USES"] == expected and out["WARNINGS"] == "1"
    assert "TRITON_INTERPRET=1" in out["MESSAGE"] and f"'{expected}'" in out["MESSAGE"]


def test_install_without_triton_says_so_unless_cuda_kernels_run():  # (a), for real
    out = select_on_cuda(blocked=("triton",), TRITON_INTERPRET="0")
    if backends.has_cuda_kernels():
        assert out == {"USES": "cuda", "WARNINGS": "0"}
    else:
        assert out["USES"] == "torch" and out["WARNINGS"] == "1"
        assert "Triton is unavailable" in out["MESSAGE"]
        assert "FASTADV_BUILD_CUDA=1" in out["MESSAGE"]


# --------------------------------------------------------------------------- the op falls back


def _strided(t):
    """t's values in a non-dense view (the op copies it to a dense buffer and back)."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


# On a GPU, Triton leads for CUDA tensors; without one, the interpreted kernels on CPU tensors
# stand in, with Triton made the preferred CPU backend.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _state():
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(4, 3, 5, 5, generator=gen)
    x_adv = (x_nat + 0.02 * torch.randn(4, 3, 5, 5, generator=gen)).clamp(0, 1)
    state = dict(x_nat=x_nat, x_adv=x_adv, grad=torch.randn(4, 3, 5, 5, generator=gen),
                 loss=torch.randn(4, generator=gen), best_loss=torch.randn(4, generator=gen))
    state = {k: v.to(DEVICE) for k, v in state.items()}
    state["x_adv"] = _strided(state["x_adv"])
    return state


OPS = {
    "linf_step": lambda s: fastadv.pgd_(s["x_adv"], s["grad"], s["x_nat"], eps=0.03, alpha=0.01),
    "l2_step": lambda s: fastadv.pgd_(s["x_adv"], s["grad"], s["x_nat"], eps=0.5, alpha=0.2,
                                      norm="l2"),
    "random_init": lambda s: fastadv.random_init_(s["x_adv"], s["x_nat"], eps=0.03,
                                                  generator=torch.Generator(DEVICE).manual_seed(1)),
    "keep_best": lambda s: fastadv.keep_best_(s["x_adv"], s["best_loss"], s["grad"], s["loss"]),
}


@pytest.fixture(params=list(OPS))
def broken_triton_kernel(request, monkeypatch, fresh):
    """(kernel, calls): Triton is the preferred backend for DEVICE tensors and `kernel`'s
    launcher raises a compile error; calls counts its calls."""
    if "triton" not in backends.available(DEVICE):
        pytest.skip(f"Triton does not run {DEVICE} tensors here")
    if DEVICE == "cpu":
        monkeypatch.setattr(backends, "CPU_PREFERENCE", ("triton", "cpp", "torch"))
    from fastadv import kernels

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("PassManager::run failed (a fake compile error)")
    monkeypatch.setattr(kernels, request.param, broken)
    ops._kernel.cache_clear()
    return request.param, calls


def test_failed_triton_kernel_falls_back_once_with_one_warning(broken_triton_kernel, monkeypatch):
    kernel, calls = broken_triton_kernel
    fallback = next(b for b in backends.available(DEVICE) if b != "triton")
    monkeypatch.setenv("FASTADV_BACKEND", fallback)
    expected = _state()
    OPS[kernel](expected)
    monkeypatch.delenv("FASTADV_BACKEND")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            state = _state()
            OPS[kernel](state)
            for name in ("x_adv", "best_loss"):
                assert torch.equal(state[name], expected[name]), name
    assert len(calls) == 1, "a failed Triton kernel must not be retried"
    [message] = backend_warnings(caught)
    assert f"{kernel} on {DEVICE} tensors uses the '{fallback}' backend" in message
    assert "a fake compile error" in message


def test_forced_triton_raises_its_failure_and_writes_nothing(broken_triton_kernel, monkeypatch):
    kernel, calls = broken_triton_kernel
    monkeypatch.setenv("FASTADV_BACKEND", "triton")
    state = _state()
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(RuntimeError, match="a fake compile error"):
        OPS[kernel](state)
    for name, value in before.items():
        assert torch.equal(state[name], value), name
    assert backends.facts().triton_failures == {}, "a forced failure is raised, not recorded"
