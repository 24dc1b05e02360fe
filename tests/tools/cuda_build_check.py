"""GPU truth without a GPU: compile fastadv's CUDA kernels (csrc/cuda/*.cu) to cubins for
real GPU architectures and check what the hardware would run.

    python tests/tools/cuda_build_check.py [--arch 80,90] [--only linf_step,random_init] [-j N]

For every kernel instantiation and architecture, from ``nvcc -Xptxas -v`` and the SASS
(``cuobjdump -sass``), it fails (exit 1) on
  - any register spill (``bytes spill stores/loads`` not 0),
  - any stack frame or local-memory instruction (LDL/STL): the kernels keep all in registers,
  - a kernel without 128-bit global loads and stores (LDG.E.128 / STG.E.128): each moves its
    data in 16-byte packs, and a silent fall back to narrower accesses costs bandwidth,
and prints one table row per kernel and architecture. Exit 2: no nvcc/cuobjdump, or a file
did not compile. Needs no GPU and no CUDA build of fastadv; only nvcc and torch's headers.

nvcc: ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda/bin/nvcc``, else ``nvcc`` on PATH.
cuobjdump: the one Triton ships (triton/backends/nvidia/bin), else next to nvcc, else PATH.
Flags: setup.py's nvcc flags plus those torch's BuildExtension adds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# setup.py's extra nvcc flags for fastadv._C.
SETUP_NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]


class ToolError(RuntimeError):
    """A tool is missing or a file does not compile: the check could not run (exit 2)."""


# --------------------------------------------------------------------------- tools


def find_nvcc() -> str:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    raise ToolError(f"nvcc not found (tried {', '.join(candidates)} and PATH)")


def find_cuobjdump(nvcc: str) -> str:
    candidates = []
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.append(os.path.join(root, "backends", "nvidia", "bin", "cuobjdump"))
    candidates += [os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump"),
                   "/usr/local/cuda/bin/cuobjdump"]
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    on_path = shutil.which("cuobjdump")
    if on_path:
        return on_path
    raise ToolError(f"cuobjdump not found (tried {', '.join(candidates)} and PATH)")


def torch_flags() -> list[str]:
    """Include dirs and defines as torch's BuildExtension passes them to nvcc."""
    # Quiet its import-time guess of CUDA_HOME: this script finds nvcc itself.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torch.utils.cpp_extension as cpp_extension

    includes = list(cpp_extension.include_paths())
    spec = importlib.util.find_spec("nvidia")  # pip's CUDA torch: CUDA headers in nvidia/cu*/
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            includes += sorted(glob.glob(os.path.join(root, "cu*", "include")))
            includes += sorted(glob.glob(os.path.join(root, "cuda_runtime", "include")))
    with open(cpp_extension.__file__) as f:  # torch >= 2.10 builds extensions as C++20
        std = "c++20" if "'-std=c++20'" in f.read() else "c++17"
    return ([f"-I{d}" for d in includes] + list(cpp_extension.COMMON_NVCC_FLAGS)
            + [f"-std={std}", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"])


# --------------------------------------------------------------------------- parsing


@dataclass
class Kernel:
    name: str  # demangled, without namespaces
    arch: int
    registers: int = -1
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    ldg128: int = 0
    stg128: int = 0
    local: int = 0  # LDL/STL instructions
    problems: list[str] = field(default_factory=list)


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SASS_FUNCTION = re.compile(r"Function : (\S+)")
_LDG128 = re.compile(r"\bLDG(\.[A-Z0-9_]+)*\.128\b")
_STG128 = re.compile(r"\bSTG(\.[A-Z0-9_]+)*\.128\b")
_LOCAL = re.compile(r"\b(LDL|STL)\b")


def parse_ptxas(text: str) -> dict[str, Kernel]:
    """Per mangled kernel name: registers, stack frame and spills from `-Xptxas -v`."""
    kernels: dict[str, Kernel] = {}
    current = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = kernels.setdefault(m.group(1), Kernel(m.group(1), int(m.group(2))))
        elif current is not None and (m := _FRAME.search(line)):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current is not None and (m := _REGS.search(line)):
            current.registers = int(m.group(1))
    return kernels


def count_sass(text: str) -> dict[str, tuple[int, int, int]]:
    """Per mangled function name in `cuobjdump -sass`: (LDG.128, STG.128, LDL/STL) counts."""
    counts: dict[str, list[int]] = {}
    current = None
    for line in text.splitlines():
        if m := _SASS_FUNCTION.search(line):
            current = counts.setdefault(m.group(1), [0, 0, 0])
        elif current is not None:
            current[0] += bool(_LDG128.search(line))
            current[1] += bool(_STG128.search(line))
            current[2] += bool(_LOCAL.search(line))
    return {name: tuple(c) for name, c in counts.items()}


def demangle(names: list[str]) -> dict[str, str]:
    """Readable short names (c++filt where present), e.g. linf_step_kernel<float, Half, 4, true>."""
    readable = dict(zip(names, names))
    cxxfilt = shutil.which("c++filt")
    if cxxfilt and names:
        out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
        if out.returncode == 0 and len(out.stdout.splitlines()) == len(names):
            readable = dict(zip(names, out.stdout.splitlines()))
    for mangled, name in readable.items():
        name = name.replace("(anonymous namespace)::", "").replace("fastadv::cuda::", "")
        name = name.replace("c10::", "").replace("fastadv::", "")
        readable[mangled] = name.split("(")[0].removeprefix("void ")
    return readable


def judge(kernel: Kernel) -> None:
    """Fills kernel.problems: spills, stack or local memory, missing 128-bit accesses."""
    if kernel.spill_stores or kernel.spill_loads:
        kernel.problems.append(
            f"spills {kernel.spill_stores} B stores / {kernel.spill_loads} B loads")
    if kernel.stack:
        kernel.problems.append(f"{kernel.stack} B stack frame")
    if kernel.local:
        kernel.problems.append(f"{kernel.local} local-memory instructions (LDL/STL)")
    if kernel.ldg128 == 0 or kernel.stg128 == 0:
        kernel.problems.append("no 128-bit global " + " and ".join(
            kind for kind, n in (("loads", kernel.ldg128), ("stores", kernel.stg128)) if n == 0))


# --------------------------------------------------------------------------- compile


def compile_one(nvcc: str, cuobjdump: str, flags: list[str], source: str, arch: int,
                out_dir: str) -> list[Kernel]:
    stem = os.path.splitext(os.path.basename(source))[0]
    cubin = os.path.join(out_dir, f"{stem}.sm_{arch}.cubin")
    cmd = [nvcc, "--cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", *flags, source, "-o", cubin]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        raise ToolError(f"{stem}.cu for sm_{arch} did not compile:\n{built.stderr[-4000:]}")
    kernels = parse_ptxas(built.stderr + built.stdout)
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True)
    if sass.returncode != 0:
        raise ToolError(f"cuobjdump -sass {cubin} failed:\n{sass.stderr[-2000:]}")
    for mangled, (ldg, stg, local) in count_sass(sass.stdout).items():
        if (kernel := kernels.get(mangled)) is not None:
            kernel.ldg128, kernel.stg128, kernel.local = ldg, stg, local
    names = demangle(list(kernels))
    for mangled, kernel in kernels.items():
        kernel.name = names[mangled]
        judge(kernel)
    return list(kernels.values())


def print_table(kernels: list[Kernel]) -> None:
    header = ("kernel", "arch", "regs", "stack", "spill st/ld", "LDG.128", "STG.128", "LDL/STL", "")
    rows = [(k.name, f"sm_{k.arch}", str(k.registers), str(k.stack),
             f"{k.spill_stores}/{k.spill_loads}", str(k.ldg128), str(k.stg128), str(k.local),
             "FAIL: " + "; ".join(k.problems) if k.problems else "ok") for k in kernels]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i in (0, 8) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="80,90", help="comma-separated SM versions (80,90)")
    parser.add_argument("--only", default="", help="comma-separated stems of csrc/cuda/*.cu")
    parser.add_argument("--csrc", default=os.path.join(REPO, "csrc"), help="the csrc/ to check")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.replace(" ", "").split(",") if a]
    sources = sorted(glob.glob(os.path.join(args.csrc, "cuda", "*.cu")))
    if args.only:
        wanted = set(args.only.split(","))
        sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in wanted]
    if not sources:
        print(f"cuda_build_check: no CUDA sources selected in {args.csrc}/cuda", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        nvcc, flags = find_nvcc(), SETUP_NVCC_FLAGS + torch_flags() + [f"-I{args.csrc}"]
        cuobjdump = find_cuobjdump(nvcc)
        print(f"cuda_build_check: {len(sources)} files x sm_{', sm_'.join(map(str, archs))} "
              f"with {nvcc}, SASS by {cuobjdump}, {args.jobs} jobs", flush=True)
        kernels: list[Kernel] = []
        with tempfile.TemporaryDirectory() as out_dir, \
                concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            jobs = [pool.submit(compile_one, nvcc, cuobjdump, flags, s, a, out_dir)
                    for s in sources for a in archs]
            for job in jobs:
                kernels += job.result()
    except ToolError as exc:
        print(f"cuda_build_check: cannot check: {exc}", file=sys.stderr)
        return 2
    kernels.sort(key=lambda k: (k.name.split("<")[0], k.arch, k.name))
    print_table(kernels)
    failed = [k for k in kernels if k.problems]
    elapsed = time.monotonic() - start
    if failed:
        print(f"cuda_build_check: FAILED: {len(failed)} of {len(kernels)} kernels "
              f"({elapsed:.0f} s):", file=sys.stderr)
        for k in failed:
            print(f"  {k.name} sm_{k.arch}: {'; '.join(k.problems)}", file=sys.stderr)
        return 1
    print(f"cuda_build_check: ok: {len(kernels)} kernels, no spills, no local memory, "
          f"128-bit loads and stores in each ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
