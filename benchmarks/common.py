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

from fastadv.devices import device_name  # noqa: F401 - the suites import it from here


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


# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets; the first name found in
# the device's name wins, so the PCIe and NVL variants come before the SXM parts.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("H200", 989.4), ("A100", 312.0))


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, for model-FLOP utilisation (None if unknown)."""
    return next((v for k, v in BF16_PEAK_TFLOPS if k in device_name), None)


def selected_cases(cases: list[dict], args) -> list[dict]:
    """The suite's cases for the models in ``args.model`` (all when not given), with every
    case setting that ``args`` also holds (not None) taken from ``args``."""
    chosen = []
    for case in cases:
        if args.model and case["model_name"] not in args.model:
            continue
        chosen.append({k: v if getattr(args, k, None) is None else getattr(args, k)
                       for k, v in case.items()})
    return chosen


class Report:
    """A suite's results as they come: each row printed and the JSON rewritten as soon as it
    is measured (``"finished": false``), so a run cut short keeps what it measured; the whole
    table at the end."""

    def __init__(self, suite: str, device: torch.device, markdown, json_path: str | None):
        self.suite, self.markdown, self.json_path = suite, markdown, json_path
        self.env = environment(device, f"benchmarks.{suite}")
        self.rows: list = []

    def add(self, row) -> None:
        self.rows.append(row)
        # Not a table line (gpu_session collects those): the row as the table will show it.
        print("measured " + self.markdown([row], self.env).splitlines()[-1], flush=True)
        self._write(finished=False)

    def finish(self, rows: list | None = None) -> None:
        """The table and the final JSON; ``rows`` replaces the rows added (ratios against
        baselines measured after a row are known only now)."""
        if rows is not None:
            self.rows = list(rows)
        print(self.markdown(self.rows, self.env))
        self._write(finished=True)
        if self.json_path:
            print(f"wrote {self.json_path}")

    def _write(self, finished: bool) -> None:
        if not self.json_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        tmp = f"{self.json_path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"suite": self.suite, **self.env, "finished": finished,
                       "rows": [asdict(r) for r in self.rows]}, f, indent=1)
        os.replace(tmp, self.json_path)  # a kill mid-write leaves the previous rows


def report(suite: str, device: torch.device, rows: list, markdown, json_path: str | None) -> None:
    """Print the suite's table (with device, versions and date) and write its JSON."""
    Report(suite, device, markdown, json_path).finish(rows)


def graph_breaks() -> int:
    """Graph breaks torch.compile has counted in this process so far."""
    return sum(torch._dynamo.utils.counters["graph_break"].values())
