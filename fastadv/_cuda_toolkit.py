"""Find a CUDA toolkit that can really build fastadv's CUDA kernels, or say why there is none.

Used by setup.py (loaded by path, so it imports nothing but the standard library) and by
``python -m fastadv.info``. "Can really build" means all of: an nvcc, the toolkit it belongs
to (an ``nvcc`` on PATH may be a wrapper script outside the toolkit, whose prefix has no
libraries), CUDA headers, a ``libcudart`` to link against (the toolkit's own, or the one
torch's CUDA wheels ship under ``site-packages/nvidia/cu*/lib``), and nvcc's major version
equal to that of the CUDA torch was built with. torch's own ``CUDA_HOME`` guess checks none
of this, which is how an install came to fail at its final link with ``cannot find -lcudart``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class Toolkit:
    """A complete toolkit: ``root`` (what CUDA_HOME should be), its nvcc and version, the
    include directories and the directory holding a linkable ``libcudart.so``."""

    root: str
    nvcc: str
    version: str
    include_dirs: list[str] = field(default_factory=list)
    cudart_dir: str = ""
    cudart_from_wheel: str = ""  # a versioned libcudart.so.N from torch's wheels, if used


class ToolkitError(Exception):
    """Why no usable toolkit was found: one line, naming what is missing."""


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolkitError(f"`{' '.join(args)}` could not run ({exc})") from exc
    return done.stdout + done.stderr


def find_nvcc(environ=os.environ) -> str:
    """$CUDA_HOME/bin/nvcc (or $CUDA_PATH) when set — then only there —, else `nvcc` on PATH,
    else /usr/local/cuda/bin/nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = environ.get(var)
        if home:
            nvcc = os.path.join(home, "bin", "nvcc")
            if not os.access(nvcc, os.X_OK):
                raise ToolkitError(f"{var}={home} has no bin/nvcc")
            return nvcc
    on_path = shutil.which("nvcc", path=environ.get("PATH"))
    if on_path:
        return on_path
    default = "/usr/local/cuda/bin/nvcc"
    if os.access(default, os.X_OK):
        return default
    raise ToolkitError("no nvcc found (not in $CUDA_HOME/bin, on PATH, or in /usr/local/cuda/bin)")


def nvcc_version(nvcc: str) -> str:
    match = re.search(r"release (\d+\.\d+)", _run([nvcc, "--version"]))
    if not match:
        raise ToolkitError(f"{nvcc} --version does not report a CUDA release")
    return match.group(1)


def toolkit_root(nvcc: str) -> str:
    """The toolkit's own folder: nvcc's dry run names it (TOP=...), which sees through wrapper
    scripts; otherwise the folder above the real nvcc."""
    out = _run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
    match = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    if match:
        return os.path.realpath(match.group(1).strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _first_existing(patterns: list[str]) -> str | None:
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def wheel_cuda_roots(cuda_major: str | None = None) -> list[str]:
    """site-packages/nvidia/cu<major> (and the older per-library nvidia/cuda_runtime)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    roots = []
    for base in spec.submodule_search_locations:
        names = [f"cu{cuda_major}"] if cuda_major else sorted(os.listdir(base))
        roots += [os.path.join(base, n) for n in names
                  if re.fullmatch(r"cu\d+", n) and os.path.isdir(os.path.join(base, n))]
        runtime = os.path.join(base, "cuda_runtime")
        if os.path.isdir(runtime):
            roots.append(runtime)
    return roots


def find_toolkit(torch_cuda: str | None, environ=os.environ,
                 wheel_roots: list[str] | None = None) -> Toolkit:
    """A complete, consistent toolkit for a torch built with CUDA ``torch_cuda`` (e.g. "13.0"),
    or ToolkitError saying what is missing."""
    if not torch_cuda:
        raise ToolkitError("torch is not a CUDA build (torch.version.cuda is None)")
    nvcc = find_nvcc(environ)
    version = nvcc_version(nvcc)
    major = torch_cuda.split(".")[0]
    if version.split(".")[0] != major:
        raise ToolkitError(f"{nvcc} is CUDA {version} but torch was built with CUDA {torch_cuda} "
                           "(the major versions must match)")
    root = toolkit_root(nvcc)
    if wheel_roots is None:
        wheel_roots = wheel_cuda_roots(major)
    targets = [root] + glob.glob(os.path.join(root, "targets", "*"))

    header = _first_existing([os.path.join(t, "include", "cuda_runtime.h") for t in targets]
                             + [os.path.join(w, "include", "cuda_runtime.h") for w in wheel_roots])
    if header is None:
        raise ToolkitError(f"no cuda_runtime.h in {root}/include or in torch's CUDA wheels")
    include_dirs = [os.path.dirname(header)]
    include_dirs += [d for w in wheel_roots for d in [os.path.join(w, "include")]
                     if os.path.isdir(d) and d not in include_dirs]

    own = _first_existing([os.path.join(t, lib, "libcudart.so")
                           for t in targets for lib in ("lib64", "lib")])
    if own:
        return Toolkit(root, nvcc, version, include_dirs, os.path.dirname(own))
    shipped = _first_existing([os.path.join(w, "lib", f"libcudart.so.{major}") for w in wheel_roots]
                              + [os.path.join(w, "lib", "libcudart.so") for w in wheel_roots])
    if shipped:
        return Toolkit(root, nvcc, version, include_dirs, "", cudart_from_wheel=shipped)
    raise ToolkitError(f"no libcudart.so in {root}/lib64 or {root}/lib, nor libcudart.so.{major} "
                       "in torch's CUDA wheels (site-packages/nvidia/cu*/lib)")


def link_shim(toolkit: Toolkit, build_dir: str) -> str:
    """A folder where ``-lcudart`` finds the wheel's versioned libcudart.so.N (the linker only
    looks for the unversioned name); the toolkit's own lib folder when it has one."""
    if not toolkit.cudart_from_wheel:
        return toolkit.cudart_dir
    shim = os.path.join(build_dir, "cudart-link")
    os.makedirs(shim, exist_ok=True)
    link = os.path.join(shim, "libcudart.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(toolkit.cudart_from_wheel, link)
    return shim
