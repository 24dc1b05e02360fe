"""One command for a lent GPU: everything a GPU can tell us about fastadv, in 10 minutes.

The GPU is an air-gapped node: what it lacks comes as wheels, bundled here beforehand.

    # here, with the registry: the wheels the node lacks
    python -m benchmarks.gpu_session --bundle ../gpu-wheels
    # there, offline, from the repository root: one command of at most 10 minutes
    python -m benchmarks.gpu_session --wheels ../gpu-wheels --out /tmp/gpu-session --archive /tmp/gpu-session.tar.gz
    # on the CPU, tiny (CI)
    python -m benchmarks.gpu_session --out /tmp/s --dry-run

Pieces, in the order of what they are worth, each a subprocess with its own timeout, its
output in ``--out``:

1. ``wheels``: with ``--wheels DIR``, what the bundle has and the node lacks, installed with
   ``pip --no-index --no-deps`` (``benchmarks.wheels``) before anything else;
2. ``build``: ``pip install --no-index --no-build-isolation --no-deps -e .`` with
   ``FASTADV_BUILD_CUDA=1`` for the visible GPU's architecture (a failed build is recorded;
   the rest runs on whatever imports);
3. ``info``: ``python -m fastadv.info``;
4. ``tests``: the op, registration, backend-choice, compile-path and CUDA tests on the GPU
   (JUnit XML);
5. ``op``: the op suite (GB/s against a copy and the eager formula);
6. ``attack``: PreActResNet-18, batch 512, PGD-10 against torchattacks and an eager loop,
   with the bf16/channels_last/CUDA-graph/torch.compile ablation;
7. ``train-epoch``: two PGD-10 training epochs of PreActResNet-18 on 50,000 synthetic
   CIFAR-shaped images (bf16, channels_last, CUDA-graphed attack), seconds per epoch (the
   checkpoints are discarded);
8. ``train-bench``: the training suite (ablation against a plain eager loop, torch.compile
   and CUDA graphs included) on 5,120 images;
9. ``time-to-robust``: test robust accuracy (PGD-10) against training seconds at budgets of
   2 and 5 s, of the madry, modern and n-fgsm recipes against a plain PyTorch loop and the
   same loop under torch.compile (``benchmarks.time_to_robust``; small CNN, 5,000 synthetic
   CIFAR-shaped images, one seed), as JSON, a table and a plot;
10. ``memcheck``: ``compute-sanitizer --tool memcheck`` over the CUDA cases of the op tests;
11. ``op-bf16``: the op suite in bfloat16.

The session prints its plan first. ``summary.json`` and ``summary.md`` (rewritten after every
piece) hold each piece's status (ok, failed, skipped), duration, reason and output files, with
the device, versions, date, git commit and command. Each piece's timeout is its share of the
time left in ``--budget-s`` (seconds that earlier pieces did not use pass on to later ones); a
piece whose share falls below its minimum is skipped. The suites write each row as it is
measured, so a piece cut short keeps what it measured. No output exceeds 4 MiB. ``--dry-run``
runs the same pieces on the CPU at tiny sizes (no sanitizer; the CPU build only where none is
built) in a few minutes, so that this script cannot rot unseen.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from . import wheels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The GPU tests: every op on every CUDA backend, opcheck and torch.compile, CUDA graphs, and
# the backend choice. The CPU cases are CI's (the -k filter drops them here).
GPU_TESTS = [f"tests/ops/test_{name}.py" for name in (
    "pgd_linf", "pgd_l2", "random_init", "keep_best", "registration", "cuda", "backend_choice",
    "validation", "compile_path", "drop_in")]
NOT_CPU_CASES = "not cpu-cpp and not cpu-torch and not cpu-triton"
MEMCHECK_TESTS = [f"tests/ops/test_{name}.py" for name in (
    "pgd_linf", "pgd_l2", "random_init", "keep_best")]
MEMCHECK_EXIT = 86  # compute-sanitizer's exit status when it found errors
# Kept back from the pieces: ending a timed-out piece (up to 10 s) and writing the summary.
RESERVE_S = 20
# The default budget leaves a 600 s command a minute for Python's start, copying the outputs
# and the margin that a command killed at its limit would lose everything past.
DEFAULT_BUDGET_S = 540.0
# No output comes back larger than this: longer logs keep their head and tail, other files
# are removed (and the summary says so).
MAX_OUTPUT_BYTES = 4 << 20
LOG_HEAD_BYTES = 256 << 10


@dataclass
class Piece:
    """One step of the session: a command, its share of the budget and what it writes."""

    name: str
    what: str
    command: list[str] | None  # None: skipped for `skip_reason`
    share: float  # of the time left, against the pieces still to run
    min_s: float  # below this timeout the piece is skipped
    outputs: dict[str, str] = field(default_factory=dict)  # label -> file name under --out
    env: dict[str, str] = field(default_factory=dict)
    skip_reason: str = ""
    note: str = ""  # recorded with the result (e.g. a missing baseline)
    # Run just before the piece (after the pieces before it, the wheels included), given the
    # piece's environment: a note to record, such as a baseline that will be missing.
    precheck: Callable[[dict], str] | None = None
    discard: list[str] = field(default_factory=list)  # globs under --out removed afterwards


@dataclass
class Result:
    name: str
    what: str
    status: str  # ok, failed, skipped
    reason: str
    duration_s: float
    timeout_s: float | None
    command: str | None
    returncode: int | None
    log: str | None
    outputs: dict[str, str]
    highlights: dict
    note: str = ""


# --------------------------------------------------------------------------- finding things


def find_compute_sanitizer() -> str | None:
    """compute-sanitizer on PATH, under $CUDA_HOME/$CUDA_PATH or /usr/local/cuda*, or from
    the nvidia-cuda-sanitizer-api wheel; None when there is none."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in filter(None, roots):
        for rel in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer"):
            path = os.path.join(root, rel)
            if os.access(path, os.X_OK):
                return path
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for path in glob.glob(os.path.join(base, "*", "compute-sanitizer", "compute-sanitizer")):
            if os.access(path, os.X_OK):
                return path
    return None


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        found = None
    return f"{found.group(1) if found else platform.machine()} ({os.cpu_count()} threads)"


def environment(device: str, argv: list[str], budget_s: float, dry_run: bool) -> dict:
    """Device, versions, date, commit and command of the session. Imports torch only (not
    fastadv, which the build may replace)."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    status = git("status", "--porcelain")
    return {
        "device": name, "device_type": device, "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "triton": wheels.installed_version("triton"),
        "torchattacks": wheels.installed_version("torchattacks"),
        "python": platform.python_version(), "host": platform.node(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": shlex.join(["python", "-m", "benchmarks.gpu_session", *argv]),
        "budget_s": budget_s, "dry_run": dry_run, "cpu_count": os.cpu_count(),
        "compute_sanitizer": find_compute_sanitizer(),
    }


# --------------------------------------------------------------------------- the pieces


def built_extension() -> bool:
    """Whether this checkout holds a built fastadv._C (found without importing fastadv, which
    needs packages the wheels piece may be about to install)."""
    return bool(glob.glob(os.path.join(ROOT, "fastadv", "_C.*.so")))


def gpu_arch() -> str | None:
    """The visible GPU's architecture for TORCH_CUDA_ARCH_LIST ("9.0" on an H100/H200)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def torchattacks_note(env: dict) -> str:
    """Why the attack suite will have no torchattacks.PGD rows, or "" when it will."""
    done = subprocess.run([sys.executable, "-c", "import torchattacks"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return ""
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return (f"torchattacks does not import ({last[:200]}): no torchattacks.PGD baseline rows "
            "(bring it with --wheels)")


def pieces(out: str, dry_run: bool, wheel_dir: str | None = None) -> list[Piece]:
    """The session's pieces, in the order of what they are worth: the wheels and the build
    (nothing runs without them), correctness, then the op, attack and training throughput,
    then the rest. Full sizes on CUDA, or tiny ones on the CPU for --dry-run."""
    py = sys.executable
    device = "cpu" if dry_run else "cuda"
    path = lambda name: os.path.join(out, name)  # noqa: E731
    quick = ["--quick"] if dry_run else []

    install = Piece("wheels", "the carried wheels the node lacks, installed offline",
                    None if wheel_dir is None else
                    [py, "-m", "benchmarks.wheels", "install", os.path.abspath(wheel_dir)],
                    0.03, 10, skip_reason="no --wheels: the packages installed here are used")

    # --no-index: whatever pip's configuration says, the build reaches for no network.
    build_cmd = [py, "-m", "pip", "install", "-v", "--no-index", "--no-build-isolation",
                 "--no-deps", "-e", "."]
    if dry_run:  # a fresh checkout gets the CPU build, as the Quick start does
        build = Piece("build", "pip install -e . (the CPU kernels: --dry-run)",
                      None if built_extension() else build_cmd, 0.20, 30,
                      env={"FASTADV_BUILD_CUDA": "0", "MAX_JOBS": str(os.cpu_count() or 2)},
                      skip_reason="--dry-run: the installed build is used")
    else:
        arch = gpu_arch()
        build = Piece("build", "pip install -e . with the CUDA kernels (FASTADV_BUILD_CUDA=1)",
                      build_cmd, 0.20, 30,
                      # The kernels for this GPU only: half the compile time of the default list.
                      env={"FASTADV_BUILD_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4),
                           **({"TORCH_CUDA_ARCH_LIST": arch} if arch else {})})
    info = Piece("info", "python -m fastadv.info", [py, "-m", "fastadv.info"], 0.02, 5)

    # -v: one line per test, so that a run cut short by its timeout still says what passed.
    pytest = [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", "--durations=15"]
    if dry_run:  # a handful of CPU cases: the machinery, not the coverage (CI runs it all)
        test_cmd = [*pytest, "tests/ops/test_pgd_linf.py", "tests/ops/test_cuda.py",
                    "-k", "test_matches_reference and cpu-cpp and float32 or test_cuda"]
    else:
        test_cmd = [*pytest, *GPU_TESTS, "-k", NOT_CPU_CASES]
    tests = Piece("tests", "the op, registration, backend-choice and CUDA tests",
                  [*test_cmd, f"--junitxml={path('tests.junit.xml')}"], 0.15, 20,
                  outputs={"junit": "tests.junit.xml"})

    op = Piece("op", "op suite: pgd_ and pgd_delta_ fp32 GB/s vs a copy and the eager lines",
               [py, "-m", "benchmarks.op", "--device", device, *quick,
                "--json", path("op.json")], 0.04, 10, outputs={"json": "op.json"})

    attack_sizes = (["--quick", "--batch", "8", "--steps", "2", "--repeats", "1",
                     "--eval-steps", "1", "--eval-restarts", "2", "--max-batch", "16"] if dry_run else
                    ["--model", "preact-resnet18", "--batch", "512", "--steps", "10",
                     "--eval-restarts", "0", "--repeats", "5"])
    attack = Piece("attack", "attack suite: PGD-10 images/s vs torchattacks and an eager loop",
                   [py, "-m", "benchmarks.attack", "--device", device, *attack_sizes,
                    "--json", path("attack.json")], 0.15, 20, outputs={"json": "attack.json"},
                   precheck=torchattacks_note)

    run_dir = path("train-epoch")
    if dry_run:
        epoch_sizes = ["--model", "small-cnn", "--synthetic-train", "129", "--synthetic-test",
                       "64", "--batch-size", "64", "--epochs", "1", "--steps", "2"]
    else:  # 50,000 training images (one more is held out for validation)
        epoch_sizes = ["--model", "preact-resnet18", "--synthetic-train", "50001",
                       "--synthetic-test", "512", "--batch-size", "512", "--epochs", "2",
                       "--steps", "10", "--cuda-graph"]
    train_epoch = Piece(
        "train-epoch", "PGD-10 adversarial training epochs on synthetic CIFAR-shaped data",
        [py, "-m", "fastadv.train", "--dataset", "synthetic", *epoch_sizes, "--precision",
         "bf16", "--channels-last", "--val-size", "1", "--eval-every", "1000000",
         "--eval-steps", "1", "--eval-examples", "1", "--device", device, "--no-progress",
         "--out", run_dir], 0.12, 20,
        outputs={"run": "train-epoch", "metrics": "train-epoch/metrics.jsonl"},
        # PreActResNet-18 checkpoints are ~90 MB each: only the metrics and report come back.
        discard=["train-epoch/*.pt", "train-epoch/*.pt.pending", "train-epoch/.*.tmp"])

    bench_sizes = (["--quick", "--images", "64", "--batch", "32", "--steps", "1", "--epochs", "2"]
                   if dry_run
                   else ["--model", "preact-resnet18", "--images", "5120", "--batch", "512",
                         "--steps", "10", "--epochs", "2"])
    train_bench = Piece("train-bench", "training suite: the ablation against a plain eager loop",
                        [py, "-m", "benchmarks.train", "--device", device, *bench_sizes,
                         "--json", path("train-bench.json")], 0.13, 30,
                        outputs={"json": "train-bench.json"})

    # The small CNN on CIFAR-shaped images: budgets of seconds still hold many epochs, and its
    # torch.compile takes seconds, not a minute. Every run is written as it ends (the compiled
    # loop runs last in each budget: a timeout cuts it first), the table and plot on SIGTERM.
    robust_sizes = (["--quick"] if dry_run else
                    ["--dataset", "synthetic", "--synthetic-train", "5000", "--synthetic-test",
                     "500", "--model", "small-cnn", "--width", "4", "--seeds", "1",
                     "--budgets", "2,5", "--attack", "pgd", "--eval-steps", "10",
                     "--eval-restarts", "1",
                     "--entries", "madry,modern,n-fgsm,plain,plain-compile"])
    time_to_robust = Piece(
        "time-to-robust", "test robust accuracy against training seconds: recipes vs plain loops",
        [py, "-m", "benchmarks.time_to_robust", "--device", device, *robust_sizes,
         "--json", path("time-to-robust.json"), "--md", path("time-to-robust.md"),
         "--plot", path("time-to-robust.png")], 0.10, 30,
        # Not "json": its runs are not a suite's rows (the table comes from the log).
        outputs={"results": "time-to-robust.json", "markdown": "time-to-robust.md",
                 "plot": "time-to-robust.png"})

    sanitizer = find_compute_sanitizer()
    memcheck_cmd = None if sanitizer is None or dry_run else [
        sanitizer, "--tool", "memcheck", "--error-exitcode", str(MEMCHECK_EXIT),
        "--print-limit", "100", *pytest, *MEMCHECK_TESTS, "-k", "cuda-",
        f"--junitxml={path('memcheck.junit.xml')}"]
    memcheck = Piece(
        "memcheck", "compute-sanitizer --tool memcheck over the CUDA op tests", memcheck_cmd,
        0.04, 20, outputs={"junit": "memcheck.junit.xml"},
        # Without the caching allocator every tensor is its own allocation: an overrun is
        # caught at the tensor's end, not at the end of a pooled block.
        env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
        skip_reason=("--dry-run: needs a GPU" + ("" if sanitizer else
                                                 "; and no compute-sanitizer was found"))
        if dry_run else "no compute-sanitizer on PATH, under $CUDA_HOME or /usr/local/cuda*")

    op_bf16 = Piece("op-bf16", "op suite in bfloat16",
                    [py, "-m", "benchmarks.op", "--device", device, "--dtype", "bfloat16",
                     *quick, "--json", path("op-bf16.json")],
                    0.02, 10, outputs={"json": "op-bf16.json"})
    return [install, build, info, tests, op, attack, train_epoch, train_bench, time_to_robust,
            memcheck, op_bf16]


# --------------------------------------------------------------------------- running


def child_env(piece: Piece) -> dict:
    """The parent's environment without the switches that would change what is measured:
    TRITON_INTERPRET (Triton's interpreter) and FASTADV_BACKEND (a forced backend)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTADV_BACKEND")}
    env["PYTHONUNBUFFERED"] = "1"
    # This Python's scripts first: the ninja that the wheels installed, where the build
    # looks for it (a venv's python run by path leaves its bin/ off PATH).
    scripts = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([scripts, *[p for p in env.get("PATH", "").split(os.pathsep)
                                              if p and p != scripts]])
    env.update(piece.env)
    return env


def run_command(command: list[str], log_path: str, env: dict, timeout_s: float) -> tuple[int | None, bool]:
    """(exit status, timed out). Runs in its own process group, so that a timeout ends the
    command and every process it started (pytest, compile workers), and only those."""
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return proc.returncode, True


def junit_counts(path: str) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def highlights(piece: Piece, out: str, log_text: str) -> dict:
    """A few numbers worth seeing in the summary, read from the piece's outputs."""
    found: dict = {}
    junit = piece.outputs.get("junit")
    if junit and os.path.exists(os.path.join(out, junit)):
        try:
            found.update(junit_counts(os.path.join(out, junit)))
        except (ET.ParseError, ValueError) as exc:
            found["junit_error"] = str(exc)
    elif junit:  # cut short before pytest wrote its report: count the -v lines
        for outcome in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            found[outcome.lower()] = len(re.findall(rf"^\S+::.* {outcome}\b", log_text, re.M))
    if piece.name == "wheels":  # benchmarks.wheels install's lines
        found["installed"] = re.findall(r"^install (\S+ \S+)", log_text, re.M)
        found["kept"] = len(re.findall(r"^keep ", log_text, re.M))
        found["missing"] = re.findall(r"^missing (\S+):", log_text, re.M)
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", log_text)
    if summary:
        found["memcheck_errors"] = int(summary[-1])
    table_json = piece.outputs.get("json")
    if table_json and os.path.exists(os.path.join(out, table_json)):
        try:
            with open(os.path.join(out, table_json)) as f:
                data = json.load(f)
            found["rows"] = len(data.get("rows", []))
            if not data.get("finished", True):
                found["rows_note"] = "cut short: the rows measured before the end"
        except (json.JSONDecodeError, OSError) as exc:
            found["json_error"] = str(exc)
    metrics = piece.outputs.get("metrics")
    if metrics and os.path.exists(os.path.join(out, metrics)):
        with open(os.path.join(out, metrics)) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        found["epoch_seconds"] = [round(e["seconds"], 2) for e in epochs if "seconds" in e]
    return found


def tables(log_text: str) -> str:
    """The Markdown tables (with their title line) that a benchmark suite printed."""
    lines = log_text.splitlines()
    keep = [i for i, line in enumerate(lines) if line.startswith("|")]
    chosen = set(keep)
    for i in keep:  # the title sits two lines above a table's header
        if i >= 2 and i - 2 not in chosen and not lines[i - 1].strip() and i - 1 not in chosen:
            chosen.update((i - 2, i - 1))
    return "\n".join(lines[i] for i in sorted(chosen))


def run_piece(piece: Piece, out: str, timeout_s: float | None, skip_reason: str) -> Result:
    command = None if piece.command is None else shlex.join(piece.command)
    if piece.command is None or skip_reason:
        return Result(piece.name, piece.what, "skipped", skip_reason or piece.skip_reason, 0.0,
                      timeout_s, command, None, None, {}, {}, piece.note)
    log = f"{piece.name}.log"
    env = child_env(piece)
    note = "; ".join(filter(None, [piece.note, piece.precheck(env) if piece.precheck else ""]))
    for name in (log, *piece.outputs.values()):  # a rerun into the same --out starts clean
        stale = os.path.join(out, name)
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    start = time.monotonic()
    try:
        code, timed_out = run_command(piece.command, os.path.join(out, log), env, timeout_s)
    except OSError as exc:  # the program itself could not start
        return Result(piece.name, piece.what, "failed", f"could not start: {exc}",
                      round(time.monotonic() - start, 1), round(timeout_s, 1), command, None,
                      log, {"log": log}, {}, note)
    duration = time.monotonic() - start
    with open(os.path.join(out, log), errors="replace") as f:
        log_text = f.read()
    trimmed = discard_and_trim(out, piece.discard)
    if timed_out:
        status, reason = "failed", f"timed out after {timeout_s:.0f} s (partial output in {log})"
    elif code == 0:
        status, reason = "ok", ""
    elif piece.name == "memcheck" and code == MEMCHECK_EXIT:
        status, reason = "failed", "compute-sanitizer found memory errors (see memcheck.log)"
    else:
        tail = [line for line in log_text.strip().splitlines() if line.strip()][-1:] or [""]
        status, reason = "failed", f"exit status {code}: {tail[0][:300]}"
    outputs = {"log": log, **{k: v for k, v in piece.outputs.items()
                              if os.path.exists(os.path.join(out, v))}}
    found = highlights(piece, out, log_text)
    table = tables(log_text)
    if table:
        found["table"] = table
    if piece.name == "info":
        found["output"] = log_text.split("\n", 1)[-1].strip()
    if trimmed:
        found["trimmed"] = trimmed
    return Result(piece.name, piece.what, status, reason, round(duration, 1),
                  round(timeout_s, 1), command, code, log, outputs, found, note)


def discard_and_trim(out: str, discard: list[str]) -> list[str]:
    """Removes what ``discard`` matches, then keeps every file under ``out`` within
    MAX_OUTPUT_BYTES: a log keeps its head and tail, anything else is removed. Returns a line
    for each file changed."""
    changed = []
    for pattern in discard:
        for path in glob.glob(os.path.join(out, pattern)):
            if os.path.isfile(path):
                changed.append(f"{os.path.relpath(path, out)}: discarded "
                               f"({os.path.getsize(path) / 2**20:.1f} MiB)")
                os.remove(path)
    for folder, _, files in os.walk(out):
        for name in files:
            path = os.path.join(folder, name)
            size = os.path.getsize(path)
            if size <= MAX_OUTPUT_BYTES:
                continue
            rel = os.path.relpath(path, out)
            if name.endswith(".log"):
                with open(path, "rb") as f:
                    head = f.read(LOG_HEAD_BYTES)
                    f.seek(size - (MAX_OUTPUT_BYTES - LOG_HEAD_BYTES - 256))
                    tail = f.read()
                cut = size - len(head) - len(tail)
                with open(path, "wb") as f:
                    f.write(head + f"\n[... {cut} bytes cut: outputs stay under "
                                   f"{MAX_OUTPUT_BYTES >> 20} MiB ...]\n".encode() + tail)
                changed.append(f"{rel}: {size / 2**20:.1f} MiB, middle cut")
            else:
                os.remove(path)
                changed.append(f"{rel}: {size / 2**20:.1f} MiB, over "
                               f"{MAX_OUTPUT_BYTES >> 20} MiB, removed")
    return changed


def timeout_for(index: int, plan: list[Piece], left_s: float) -> float:
    """This piece's share of the time left, against the pieces still to run."""
    rest = sum(p.share for p in plan[index:] if p.command is not None)
    return left_s * plan[index].share / rest if rest > 0 else left_s


# --------------------------------------------------------------------------- the summary


def markdown(env: dict, results: list[Result], total_s: float) -> str:
    lines = [f"# GPU session: {env['device']}", "",
             f"{env['date']} · torch {env['torch']} (CUDA {env['torch_cuda']}) · triton "
             f"{env['triton']} · python {env['python']} · git {env['git_sha'] or 'unknown'}"
             f"{' (dirty)' if env['git_dirty'] else ''}", "",
             f"`{env['command']}` · {total_s:.0f} s of a {env['budget_s']:.0f} s budget"
             + (" · **dry run (CPU, tiny sizes)**" if env["dry_run"] else ""), "",
             "| piece | status | seconds | timeout | reason / highlights | outputs |",
             "|---|---|---:|---:|---|---|"]
    for r in results:
        notes = [r.reason] if r.reason else []
        notes += [f"{k}: {v}" for k, v in r.highlights.items() if k not in ("table", "output")]
        if r.note:
            notes.append(r.note)
        timeout = "—" if r.timeout_s is None else f"{r.timeout_s:.0f}"
        lines.append(f"| {r.name} | {r.status} | {r.duration_s:.1f} | {timeout} "
                     f"| {'; '.join(notes).replace('|', '/')} "
                     f"| {', '.join(r.outputs.values())} |")
    for r in results:
        if "output" in r.highlights:
            lines += ["", f"## {r.name}", "", "```", r.highlights["output"], "```"]
        if "table" in r.highlights:
            lines += ["", f"## {r.name}", "", r.highlights["table"]]
    return "\n".join(lines) + "\n"


def write_summary(out: str, env: dict, results: list[Result], total_s: float,
                  finished: bool) -> None:
    data = {**env, "finished": finished, "total_s": round(total_s, 1),
            "pieces": [asdict(r) for r in results]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(env, results, total_s))


def write_archive(out: str, archive: str) -> None:
    """``out`` as one .tar.gz, replaced whole (a kill mid-write keeps the previous one): one
    file to carry back, as of the last piece that ended."""
    tmp = f"{archive}.{os.getpid()}.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=os.path.basename(out.rstrip(os.sep)) or "gpu-session")
    os.replace(tmp, archive)


def planned_timeouts(plan: list[Piece], budget_s: float) -> dict[str, float]:
    """Each piece's timeout if every piece before it used all of its own: the least it gets."""
    for_pieces = budget_s - reserve_s(budget_s)
    total = sum(p.share for p in plan if p.command is not None)
    return {p.name: for_pieces * p.share / total for p in plan if p.command is not None}


def reserve_s(budget_s: float) -> float:
    return min(RESERVE_S, 0.1 * budget_s)


def session(out: str, budget_s: float, dry_run: bool, skip: set[str], argv: list[str],
            wheel_dir: str | None = None, archive: str | None = None) -> list[Result]:
    start = time.monotonic()
    os.makedirs(out, exist_ok=True)
    device = "cpu" if dry_run else "cuda"
    env = environment(device, argv, budget_s, dry_run)
    for name in ("TRITON_INTERPRET", "FASTADV_BACKEND"):
        if os.environ.get(name):
            env[f"ignored_{name}"] = os.environ[name]  # unset for every piece
    plan = pieces(out, dry_run, wheel_dir)
    for p in plan:
        if p.name in skip:
            p.command, p.skip_reason = None, "--skip"
    env["plan_s"] = {k: round(v) for k, v in planned_timeouts(plan, budget_s).items()}
    print(f"plan: {budget_s:.0f} s, of which {reserve_s(budget_s):.0f} s kept for ending a "
          "piece and the summary; each piece's timeout at least (time an earlier piece leaves "
          "passes on):", flush=True)
    for p in plan:
        seconds = env["plan_s"].get(p.name)
        print(f"  {p.name:<12} " + (f"{seconds:4d} s" if seconds is not None
                                    else f"skipped: {p.skip_reason}"), flush=True)
    results: list[Result] = []
    for i, piece in enumerate(plan):
        left = budget_s - reserve_s(budget_s) - (time.monotonic() - start)
        timeout = timeout_for(i, plan, left) if piece.command is not None else None
        why = ""
        if timeout is not None and timeout < piece.min_s:
            why = f"budget spent: {timeout:.0f} s left for it, needs at least {piece.min_s:.0f} s"
        print(f"[{i + 1}/{len(plan)}] {piece.name}: {piece.what}"
              + (f" (timeout {timeout:.0f} s)" if timeout and not why else ""), flush=True)
        result = run_piece(piece, out, timeout, why)
        results.append(result)
        if piece.name == "wheels":
            env["torchattacks"] = wheels.installed_version("torchattacks")
        print(f"    {result.status} in {result.duration_s:.1f} s"
              + (f": {result.reason}" if result.reason else "")
              + (f" ({result.note})" if result.note else ""), flush=True)
        write_summary(out, env, results, time.monotonic() - start, finished=False)
        if archive:
            write_archive(out, archive)
    total = time.monotonic() - start
    write_summary(out, env, results, total, finished=True)
    if archive:
        write_archive(out, archive)
    print(f"wrote {os.path.join(out, 'summary.md')} and summary.json ({total:.0f} s)"
          + (f"; everything in {archive}" if archive else ""))
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="directory for every output (required unless --bundle); "
                                      "outside the working tree on a machine given back after")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock seconds for the whole session (default "
                             f"{DEFAULT_BUDGET_S:.0f}: inside a 600 s command with margin)")
    parser.add_argument("--archive", metavar="FILE",
                        help="also keep --out as one .tar.gz, rewritten after every piece "
                             "(one file to carry back, even from a command killed later)")
    parser.add_argument("--wheels", metavar="DIR",
                        help="before anything else, install offline what this bundle has and "
                             "this Python lacks (made by --bundle)")
    parser.add_argument("--bundle", metavar="DIR",
                        help="on a machine with the registry: download every wheel the "
                             "session needs for the GPU node (CPython 3.12, manylinux x86_64) "
                             "into DIR with a manifest, and exit")
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME",
                        help="with --bundle: leave out a package the node is known to have")
    parser.add_argument("--dry-run", action="store_true",
                        help="every piece on the CPU at tiny sizes (CI); builds the CPU "
                             "kernels only where none are built")
    parser.add_argument("--skip", action="append", default=[], metavar="PIECE",
                        help="skip this piece (repeatable): " + ", ".join(
                            p.name for p in pieces("", True)))
    args = parser.parse_args(argv)
    if args.bundle:
        sys.exit(wheels.main(["bundle", args.bundle,
                              *[a for name in args.exclude for a in ("--exclude", name)]]))
    if args.exclude:
        parser.error("--exclude goes with --bundle")
    if not args.out:
        parser.error("--out is required: a directory for every output")
    names = {p.name for p in pieces("", True)}
    unknown = set(args.skip) - names
    if unknown:
        parser.error(f"--skip: unknown piece(s) {', '.join(sorted(unknown))}")
    if args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    if args.wheels and not os.path.isfile(os.path.join(args.wheels, "manifest.json")):
        parser.error(f"--wheels: {args.wheels} holds no manifest.json (make it with --bundle)")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible: use --dry-run to rehearse on the CPU")
    archive = os.path.abspath(args.archive) if args.archive else None
    if archive and archive.startswith(os.path.abspath(args.out) + os.sep):
        parser.error("--archive must lie outside --out (it holds --out)")
    results = session(os.path.abspath(args.out), args.budget_s, args.dry_run, set(args.skip),
                      argv, args.wheels, archive)
    # Failures are in the summary; the exit status says whether there were any.
    sys.exit(1 if any(r.status == "failed" for r in results) else 0)


if __name__ == "__main__":
    main()
