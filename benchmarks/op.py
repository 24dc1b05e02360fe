"""The op benchmark: fastadv.pgd_ against the eager formula most PGD code uses, and against a
plain tensor copy measured in the same run (the memory roofline a fused step can approach);
then the perturbation form, fastadv.pgd_delta_, against the two lines delta-form code writes
(``delta:`` rows, ratios against those lines), with ε per channel too.

    python -m benchmarks.op --device cpu [--quick] [--json benchmarks/results/op-cpu.json]
    python -m benchmarks.op --device cpu --call-overhead   # the call-overhead table alone

Bandwidth counts the bytes the fused op must move: read x_adv, grad, x_nat, write x_adv
(for the copy: read and write once). GB/s and "of copy" use the min time; the eager ratio is
given on min and on median times, since on CPU the eager formula's six allocations make its
times bimodal (page faults when malloc returns fresh memory).

``compile`` is ``torch.compile`` of the same formula written in place (Inductor fuses it into
one C++ loop on the CPU, one Triton kernel on a GPU); its compile time is given apart from
its steady-state time. The call-overhead table times one call on a 2x3x4x4 tensor, the host
cost a small GPU step cannot hide: ``torch.add``, the eager formula, the registered op called
directly, and the public ``fastadv.pgd_`` with float ε/α, with (the same, reused) tensor ε/α,
and with float ε/α and its kernel stubbed out (the op layer's own host time: checks,
dispatch, backend choice, layout; what a CUDA call pays on top of the kernel launch,
measurable without a GPU).
"""

from __future__ import annotations

import argparse
import os
import time
import timeit
from dataclasses import dataclass
from typing import Optional
from unittest import mock

import torch

import fastadv
from fastadv import backends

from .common import report, time_fn

EPS, ALPHA = 8 / 255, 2 / 255

SHAPES = {
    "128x3x32x32": (128, 3, 32, 32),
    "512x3x32x32": (512, 3, 32, 32),
    "1024x3x32x32": (1024, 3, 32, 32),
    "64x3x224x224": (64, 3, 224, 224),
}
QUICK_SHAPES = ("128x3x32x32", "512x3x32x32")


def eager_linf_step(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA, lower=0.0, upper=1.0):
    """The step as common public PGD code writes it (one kernel and one allocation each)."""
    x_adv = x_adv + alpha * grad.sign()
    x_adv = torch.min(torch.max(x_adv, x_nat - eps), x_nat + eps)
    return torch.clamp(x_adv, lower, upper)


def eager_delta_step(delta, grad, x, eps=EPS, alpha=ALPHA, lower=0.0, upper=1.0):
    """The perturbation-form step as delta-form PGD code writes it (two lines)."""
    d = torch.clamp(delta + alpha * torch.sign(grad), min=-eps, max=eps)
    return torch.max(torch.min(d, upper - x), lower - x)


def make_state(shape, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(shape, generator=gen).to(device, dtype)
    step = (0.01 * torch.randn(shape, generator=gen)).clamp(-EPS, EPS)  # inside the ball
    x_adv = (x_nat + step.to(device, dtype)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    return x_adv, grad, x_nat


def compiled_step_fn(x_adv, grad, x_nat):
    """torch.compile of the eager formula, in place like pgd_; returns (fn, compile seconds)."""
    step = torch.compile(lambda x, g, n: x.copy_(eager_linf_step(x, g, n)), dynamic=False)
    start = time.perf_counter()
    step(x_adv, grad, x_nat)
    if x_adv.is_cuda:
        torch.cuda.synchronize(x_adv.device)
    return (lambda: step(x_adv, grad, x_nat)), time.perf_counter() - start


def fused_step_fn(backend: str, x_adv, grad, x_nat):
    def run():
        os.environ["FASTADV_BACKEND"] = backend
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    return run


def delta_step_fn(backend: str, delta, grad, x, eps=EPS, alpha=ALPHA):
    def run():
        os.environ["FASTADV_BACKEND"] = backend
        fastadv.pgd_delta_(delta, grad, x, eps=eps, alpha=alpha)
    return run


def delta_timings(device, x_adv, grad, x_nat, repeats) -> dict:
    """The perturbation form on the same tensors: eager lines, compiled, fastadv per backend
    with float ε and with ε/α per channel ([C, 1, 1])."""
    delta = (x_adv - x_nat).clamp(-EPS, EPS)
    timings = {"delta: eager": time_fn(lambda: eager_delta_step(delta, grad, x_nat), device,
                                       repeats=repeats)}
    step = torch.compile(lambda d, g, n: d.copy_(eager_delta_step(d, g, n)), dynamic=False)
    work = delta.clone()
    start = time.perf_counter()
    step(work, grad, x_nat)
    compile_s = time.perf_counter() - start
    timings["delta: compile"] = time_fn(lambda: step(work, grad, x_nat), device,
                                        repeats=repeats)
    channels = x_adv.shape[1]
    eps_c = torch.full((channels, 1, 1), EPS, device=device)
    for backend in backends.available(device):
        timings[f"delta: fastadv[{backend}]"] = time_fn(
            delta_step_fn(backend, delta.clone(), grad, x_nat), device, repeats=repeats)
        timings[f"delta: fastadv[{backend}] ε/α per channel"] = time_fn(
            delta_step_fn(backend, delta.clone(), grad, x_nat, eps_c, eps_c / 4), device,
            repeats=repeats)
    return timings, compile_s


@dataclass(frozen=True)
class Row:
    shape: str
    dtype: str
    impl: str
    min_us: float
    median_us: float
    gb_per_s: float
    fraction_of_copy: float
    speedup_vs_eager: float  # eager min / this min
    speedup_vs_eager_median: float
    compile_s: Optional[float] = None  # compile time (first call), apart from min/median
    vs_torch_add: Optional[float] = None  # call-overhead rows: this call / one torch.add


def run(device: torch.device, shapes, dtype=torch.float32, repeats=20) -> list[Row]:
    rows = []
    saved = os.environ.get("FASTADV_BACKEND")
    try:
        for name in shapes:
            x_adv, grad, x_nat = make_state(SHAPES[name], device, dtype)
            op_bytes = 4 * x_adv.numel() * x_adv.element_size()
            copy_dst = torch.empty_like(x_adv)
            timings = {
                "copy": time_fn(lambda: copy_dst.copy_(x_adv), device, repeats=repeats),
                "eager": time_fn(lambda: eager_linf_step(x_adv, grad, x_nat), device,
                                 repeats=repeats),
            }
            compiled, compile_s = compiled_step_fn(x_adv.clone(), grad, x_nat)
            timings["compile"] = time_fn(compiled, device, repeats=repeats)
            for backend in backends.available(device):
                timings[f"fastadv[{backend}]"] = time_fn(
                    fused_step_fn(backend, x_adv, grad, x_nat), device, repeats=repeats)
            deltas, delta_compile_s = delta_timings(device, x_adv, grad, x_nat, repeats)
            timings.update(deltas)
            copy_gbs = 2 * x_adv.numel() * x_adv.element_size() / timings["copy"].min_s / 1e9
            for impl, t in timings.items():
                moved = op_bytes / 2 if impl == "copy" else op_bytes
                gbs = moved / t.min_s / 1e9
                eager = timings["delta: eager" if impl.startswith("delta:") else "eager"]
                compiled_s = {"compile": compile_s, "delta: compile": delta_compile_s}.get(impl)
                rows.append(Row(name, str(dtype).removeprefix("torch."), impl, t.min_s * 1e6,
                                t.median_s * 1e6, gbs, gbs / copy_gbs,
                                eager.min_s / t.min_s, eager.median_s / t.median_s,
                                compiled_s))
    finally:
        if saved is None:
            os.environ.pop("FASTADV_BACKEND", None)
        else:
            os.environ["FASTADV_BACKEND"] = saved
    return rows


OVERHEAD_SHAPE = (2, 3, 4, 4)


def _no_kernel(backend: str, name: str):
    """A kernel launcher that launches nothing (for the stubbed-kernel row)."""
    return lambda *args: None


def call_overhead(device: torch.device, number: int = 2000, repeats: int = 15) -> list[Row]:
    """Host time of one call on a tiny tensor, min over `repeats` runs of `number` calls (the
    machine is noisy; the min is the cost, the rest is interference). Without a device sync:
    on a GPU this is the launch cost the CPU pays, which a small step cannot hide."""
    x_adv, grad, x_nat = make_state(OVERHEAD_SHAPE, device)
    out = torch.empty_like(x_adv)
    batch = OVERHEAD_SHAPE[0]
    eps_t = torch.full((batch,), EPS, device=device)
    alpha_t = torch.full((batch,), ALPHA, device=device)
    args = (x_adv, grad, x_nat, *fastadv.ops.ball_args(x_adv, EPS, ALPHA, 0.0, 1.0, "linf"))

    def float_eps():
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)

    delta = (x_adv - x_nat).clamp(-EPS, EPS)
    eps_c = torch.full((OVERHEAD_SHAPE[1], 1, 1), EPS, device=device)

    calls = {
        "call: torch.add": lambda: torch.add(x_adv, grad),
        "call: torch.add(out=)": lambda: torch.add(x_adv, grad, out=out),
        "call: eager formula": lambda: eager_linf_step(x_adv, grad, x_nat),
        "call: torch.ops.fastadv.pgd_": lambda: torch.ops.fastadv.pgd_(*args),
        "call: fastadv.pgd_ (float eps)": float_eps,
        "call: fastadv.pgd_ (float eps, kernel stubbed)": float_eps,
        "call: fastadv.pgd_ (tensor eps)": lambda: fastadv.pgd_(x_adv, grad, x_nat,
                                                                eps=eps_t, alpha=alpha_t),
        "call: eager delta lines": lambda: eager_delta_step(delta, grad, x_nat),
        "call: fastadv.pgd_delta_ (float eps)": lambda: fastadv.pgd_delta_(
            delta, grad, x_nat, eps=EPS, alpha=ALPHA),
        "call: fastadv.pgd_delta_ (eps per channel)": lambda: fastadv.pgd_delta_(
            delta, grad, x_nat, eps=eps_c, alpha=eps_c),
    }
    float_eps()  # the backend choice is made (and kept, also with the kernel stubbed)
    times = {}
    for impl, fn in calls.items():
        kernel = _no_kernel if impl.endswith("kernel stubbed)") else fastadv.ops._kernel
        with mock.patch.object(fastadv.ops, "_kernel", kernel):
            fn()
            samples = [t / number for t in timeit.repeat(fn, number=number, repeat=repeats)]
        times[impl] = (min(samples), sorted(samples)[len(samples) // 2])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    add = times["call: torch.add"][0]
    name = "x".join(map(str, OVERHEAD_SHAPE))
    return [Row(name, "float32", impl, lo * 1e6, mid * 1e6, 0.0, 0.0, 0.0, 0.0,
                vs_torch_add=lo / add) for impl, (lo, mid) in times.items()]


def markdown(rows: list[Row], env: dict) -> str:
    lines = [f"`pgd_` (l-inf step) on {env['device']}, torch {env['torch']}, {env['date'][:10]}"]
    calls = [r for r in rows if r.impl.startswith("call: ")]
    steps = [r for r in rows if r not in calls]
    if steps or not calls:
        lines += ["", "| shape | dtype | impl | min µs | median µs | GB/s | of copy "
                  "| vs eager (min) | vs eager (median) | compile s |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in steps:
        compile_s = f"{r.compile_s:.1f}" if r.compile_s is not None else ""
        lines.append(f"| {r.shape} | {r.dtype} | {r.impl} | {r.min_us:.1f} | {r.median_us:.1f} "
                     f"| {r.gb_per_s:.1f} | {r.fraction_of_copy:.0%} | {r.speedup_vs_eager:.2f}× "
                     f"| {r.speedup_vs_eager_median:.2f}× | {compile_s} |")
    if calls:
        lines += ["", f"Host time of one call on a {calls[0].shape} tensor (min of runs):", "",
                  "| call | min µs | median µs | vs torch.add |", "|---|---:|---:|---:|"]
        lines += [f"| {r.impl.removeprefix('call: ')} | {r.min_us:.2f} | {r.median_us:.2f} "
                  f"| {r.vs_torch_add:.1f}× |" for r in calls]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="two small shapes, few repeats")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--call-overhead", action="store_true",
                        help="only the call-overhead table (host time of one call)")
    parser.add_argument("--json", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else tuple(SHAPES)
    rows = [] if args.call_overhead else run(device, shapes, getattr(torch, args.dtype),
                                             repeats=5 if args.quick else 30)
    rows += call_overhead(device, number=500 if args.quick else 2000,
                          repeats=5 if args.quick else 15)
    report("op", device, rows, markdown, args.json)

if __name__ == "__main__":
    main()
