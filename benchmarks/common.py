"""Timing and environment capture shared by the benchmark suites."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from fastadv._io import device_name  # noqa: F401 - the suites import it from here


@dataclass(frozen=True)
class Timing:
    min_s: float
    median_s: float
    repeats: int


def time_fn(fn, device: torch.device, *, repeats: int, warmup: int = 3) -> Timing:
    """Min and median wall time of fn() over `repeats` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return Timing(min(samples), statistics.median(samples), repeats)


def environment(device: torch.device, module: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": sha,
        "command": " ".join(["python", "-m", module, *sys.argv[1:]]),
    }


def report(suite: str, device: torch.device, rows: list, markdown, json_path: str | None) -> None:
    """Print the suite's table (with device, versions and date) and write its JSON."""
    env = environment(device, f"benchmarks.{suite}")
    print(markdown(rows, env))
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"suite": suite, **env, "rows": [asdict(r) for r in rows]}, f, indent=1)
        print(f"wrote {json_path}")
