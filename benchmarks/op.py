"""The op benchmark: fastadv.pgd_ against the eager formula most PGD code uses, and against a
plain tensor copy measured in the same run (the memory roofline a fused step can approach).

    python -m benchmarks.op --device cpu [--quick] [--json benchmarks/results/op-cpu.json]

Bandwidth counts the bytes the fused op must move: read x_adv, grad, x_nat, write x_adv
(for the copy: read and write once). GB/s and "of copy" use the min time; the eager ratio is
given on min and on median times, since on CPU the eager formula's six allocations make its
times bimodal (page faults when malloc returns fresh memory).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

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


def make_state(shape, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(shape, generator=gen).to(device, dtype)
    x_adv = (x_nat + 0.01 * torch.randn(shape, generator=gen).to(device, dtype)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    return x_adv, grad, x_nat


def fused_step_fn(backend: str, x_adv, grad, x_nat):
    def run():
        os.environ["FASTADV_BACKEND"] = backend
        fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)
    return run


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
            for backend in backends.available(device):
                timings[f"fastadv[{backend}]"] = time_fn(
                    fused_step_fn(backend, x_adv, grad, x_nat), device, repeats=repeats)
            copy_gbs = 2 * x_adv.numel() * x_adv.element_size() / timings["copy"].min_s / 1e9
            for impl, t in timings.items():
                moved = op_bytes / 2 if impl == "copy" else op_bytes
                gbs = moved / t.min_s / 1e9
                rows.append(Row(name, str(dtype).removeprefix("torch."), impl, t.min_s * 1e6,
                                t.median_s * 1e6, gbs, gbs / copy_gbs,
                                timings["eager"].min_s / t.min_s,
                                timings["eager"].median_s / t.median_s))
    finally:
        if saved is None:
            os.environ.pop("FASTADV_BACKEND", None)
        else:
            os.environ["FASTADV_BACKEND"] = saved
    return rows


def markdown(rows: list[Row], env: dict) -> str:
    lines = [f"`pgd_` (l-inf step) on {env['device']}, torch {env['torch']}, {env['date'][:10]}",
             "", "| shape | dtype | impl | min µs | median µs | GB/s | of copy "
             "| vs eager (min) | vs eager (median) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.dtype} | {r.impl} | {r.min_us:.1f} | {r.median_us:.1f} "
                     f"| {r.gb_per_s:.1f} | {r.fraction_of_copy:.0%} | {r.speedup_vs_eager:.2f}× "
                     f"| {r.speedup_vs_eager_median:.2f}× |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="two small shapes, few repeats")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else tuple(SHAPES)
    rows = run(device, shapes, getattr(torch, args.dtype), repeats=5 if args.quick else 30)
    report("op", device, rows, markdown, args.json)

if __name__ == "__main__":
    main()
