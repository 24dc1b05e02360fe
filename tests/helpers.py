"""Shared test helpers: data builders, layouts and an exact/ulp comparison that names the
first mismatching element."""

import contextlib
import json
import os
import signal
import subprocess
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def ulp(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def assert_ulp_close(actual, expected, *, ulps: int = 0, msg: str = ""):
    """|actual - expected| <= ulps units in the last place of expected (NaN == NaN)."""
    assert actual.shape == expected.shape, f"{msg} shape {actual.shape} vs {expected.shape}"
    a, e = actual.double(), expected.to(actual.dtype).double()
    both_nan = torch.isnan(a) & torch.isnan(e)
    spacing = torch.finfo(actual.dtype).eps * torch.clamp_min(e.abs(), torch.finfo(actual.dtype).tiny)
    bad = ~both_nan & ~((a - e).abs() <= ulps * spacing) & ~(a == e)
    if bad.any():
        idx = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(
            f"{msg} {int(bad.sum())} of {bad.numel()} elements differ by more than {ulps} ulp; "
            f"first at {idx}: actual {a[idx].item()!r} expected {e[idx].item()!r}"
        )


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a larger buffer: not dense
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        view = big[..., ::2]
        view.copy_(t)
        return view
    if layout == "transposed":  # dense, but batch is not outermost
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    raise ValueError(layout)


def attack_state(shape, dtype=torch.float32, device="cpu", *, eps=8 / 255, seed=0):
    """(x_nat in [0,1], x_adv somewhere around it — sometimes outside the ball, grad with
    zeros and NaNs mixed in)."""
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 2 * eps * (torch.rand(shape, generator=gen) * 2 - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    flat = grad.view(-1)
    flat[:: 7] = 0.0
    flat[3 :: 11] = float("nan")
    return (x_nat.to(device, dtype), x_adv.to(device, dtype), grad.to(device))


def interpreted(device: torch.device, backend: str) -> bool:
    """Triton on CPU tensors runs in Triton's interpreter, which rounds bf16 differently."""
    return backend == "triton" and device.type == "cpu"


def step_ulps(device, backend, dtype) -> int:
    """The kernels match the reference exactly, except bf16 stores under the interpreter."""
    return 1 if interpreted(device, backend) and dtype == torch.bfloat16 else 0


class OpsSeen(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def same_report(a_path, b_path):
    """Two evaluation reports (fastadv.eval --json) agree on every result: per-example bits,
    accuracies, the curve, each attack's accuracy and each sanity check."""
    a, b = json.load(open(a_path)), json.load(open(b_path))
    for key in ("per_example", "clean_acc", "robust_acc", "curve"):
        assert a[key] == b[key], key
    assert {k: v["robust_acc"] for k, v in a["attacks"].items()} == \
        {k: v["robust_acc"] for k, v in b["attacks"].items()}
    assert [(c["name"], c["status"], c["values"]) for c in a["sanity"]["checks"]] == \
        [(c["name"], c["status"], c["values"]) for c in b["sanity"]["checks"]]


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside (tiny convolutions on a shared 2-core
    machine: one thread is ~20x faster than two fighting other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trained_checkpoint(folder, epochs: int) -> str:
    """best.pt of a real (standard, non-robust) training run on digits, in ``folder``/run."""
    from fastadv.train.cli import main as train_main

    out = folder / "run"
    assert train_main(["--dataset", "digits", "--width", "1", "--method", "standard",
                       "--epochs", str(epochs), "--no-progress", "--out", str(out)]) == 0
    return str(out / "best.pt")


def kill_group_mid_run(command, env, last: str, steps: int, seconds: float = 300) -> int:
    """Start ``command`` (a torchrun group) in a session of its own and SIGKILL all of it
    (torchrun and every rank at once) once ``last`` holds ``steps`` optimizer steps, or the
    group ended, or ``seconds`` passed; returns the steps ``last`` holds then."""
    from fastadv.checkpoint import load_checkpoint
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline, done = time.time() + seconds, 0
    while done < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
        if os.path.exists(last):
            try:
                done = load_checkpoint(last)["progress"]["global_step"]
            except (ValueError, FileNotFoundError):  # caught mid-rename
                pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return load_checkpoint(last)["progress"]["global_step"]
