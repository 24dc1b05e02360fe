"""Instructions per call (and per element) of the op micro-benchmark, counted by valgrind's
callgrind: a figure that does not move with the load on a noisy machine, so that a change in
a kernel's cost shows as a stable number.

    python -m benchmarks.instructions [--shape 128x3x32x32] [--impl fastadv eager call] [--calls 20]

Each implementation runs in a child process under callgrind with collection switched on only
inside ``builtin_sum``: the child makes its warm-up call outside it, then runs the N counted
calls as ``sum(map(once, range(N)))``. One thread (OMP_NUM_THREADS=1): the count is the work,
not how it is spread. Implementations: ``fastadv`` (the public pgd_ on the CPU backend),
``eager`` (the six-kernel formula), ``call`` (pgd_ on a 2x3x4x4 tensor: the per-call host
cost), ``add`` (torch.add on 2x3x4x4, the yardstick of ``call``). Each child starts torch
under valgrind: about a minute apiece on this machine. Optional; not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

IMPLS = ("fastadv", "eager", "call", "add")
TINY = "2x3x4x4"


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split("x"))


def _child(impl: str, shape: str, calls: int) -> None:
    import torch

    import fastadv

    from .op import ALPHA, EPS, eager_linf_step, make_state

    torch.set_num_threads(1)
    x_adv, grad, x_nat = make_state(_shape(TINY if impl in ("call", "add") else shape), "cpu")
    step = {
        "fastadv": lambda: fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA),
        "call": lambda: fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA),
        "eager": lambda: eager_linf_step(x_adv, grad, x_nat),
        "add": lambda: torch.add(x_adv, grad),
    }[impl]

    def once(_):
        step()
        return 0

    step()  # warm-up (lazy initialisation, caches) outside the counted region
    sum(map(once, range(calls)))


def count(impl: str, shape: str, calls: int) -> int:
    """Instructions executed inside the counted region (all `calls` calls)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTADV_BACKEND": "cpp"}
        env.pop("TRITON_INTERPRET", None)
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
               "--toggle-collect=builtin_sum", f"--callgrind-out-file={out}",
               sys.executable, "-m", "benchmarks.instructions", "--child", impl,
               "--shape", shape, "--calls", str(calls)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            text = f.read()
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(match.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="128x3x32x32")
    parser.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.shape, args.calls)
        return
    print(f"Instructions (callgrind, one thread), {args.calls} calls each\n")
    print("| impl | shape | instructions / call | instructions / element |")
    print("|---|---|---:|---:|")
    for impl in args.impl:
        shape = TINY if impl in ("call", "add") else args.shape
        calls = args.calls * 50 if impl in ("call", "add") else args.calls
        per_call = count(impl, shape, calls) / calls
        numel = 1
        for n in _shape(shape):
            numel *= n
        print(f"| {impl} | {shape} | {per_call:,.0f} | {per_call / numel:.2f} |", flush=True)


if __name__ == "__main__":
    main()
