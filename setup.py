"""Builds fastadv._C from csrc/: the CPU kernels always, the CUDA kernels when they can and
should be built. An optional part never fails the install.

FASTADV_BUILD_CUDA (unset = auto):
  auto  the CUDA kernels are built when torch is a CUDA build, a complete toolkit is found
        (nvcc, its headers, a libcudart to link — the toolkit's or the one torch's wheels ship —
        and nvcc's major version equal to torch's CUDA) and a GPU is visible. Otherwise, or if
        their build fails, the CPU extension is built and one line says why.
        With no GPU visible the CUDA kernels are skipped on purpose: compiling them takes
        minutes on a small machine, and the Triton kernels serve a GPU at run time anyway.
  1     insist (e.g. wheels for a cluster built on a GPU-less node): fail naming what is missing.
  0     never.
TORCH_CUDA_ARCH_LIST is respected (default 8.0;9.0+PTX). MAX_JOBS bounds parallel compilation.
FASTADV_BUILD_EXT=0 installs the pure-Python package (reference backend plus Triton) with no
compiled extension, as happens by itself where no C++ compiler is found (=1 insists).
What was built and why is written to fastadv/_build_info.json (`python -m fastadv.info`).
"""

import copy
import glob
import importlib.util
import json
import os
import shutil
import sys

from setuptools import setup

import torch
import torch.utils.cpp_extension as cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(HERE, "fastadv", "_build_info.json")
FORCE_HINT = "FASTADV_BUILD_CUDA=1 builds them anyway (and fails saying what is missing)"


def _load_toolkit_finder():
    # By path: importing the fastadv package here would need the extension being built.
    path = os.path.join(HERE, "fastadv", "_cuda_toolkit.py")
    spec = importlib.util.spec_from_file_location("_fastadv_cuda_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toolkit_finder = _load_toolkit_finder()


def _flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    return value not in ("0", "false", "no", "off")


def _say(line):
    print(f"fastadv: {line}", flush=True)


# What the build will do and why: said once, when the extension is built (pip runs this file
# more than once per install).
BUILD_NOTE = []


def _write_build_info(**info):
    with open(BUILD_INFO, "w") as f:
        json.dump(info, f, indent=1)


def _gpu_visible():
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver is no GPU to build for
        return False


def _cuda_plan():
    """(toolkit or None, why the CUDA kernels are not built or None)."""
    forced = _flag("FASTADV_BUILD_CUDA")
    if forced is False:
        return None, "FASTADV_BUILD_CUDA=0"
    try:
        toolkit = toolkit_finder.find_toolkit(torch.version.cuda)
    except toolkit_finder.ToolkitError as exc:
        if forced:
            raise SystemExit(f"fastadv: FASTADV_BUILD_CUDA=1 but the CUDA kernels cannot be "
                             f"built: {exc}")
        return None, str(exc)
    if forced is None and not _gpu_visible():
        return None, (f"no GPU is visible (CUDA toolkit {toolkit.version} at {toolkit.root} "
                      "is complete; building them takes minutes and the Triton kernels serve "
                      "a GPU at run time)")
    return toolkit, None


def _extensions(build_temp):
    if _flag("FASTADV_BUILD_EXT") is False:
        _write_build_info(extension=False, cuda_kernels=False, why="FASTADV_BUILD_EXT=0")
        return []
    if _flag("FASTADV_BUILD_EXT") is None and shutil.which(os.environ.get("CXX", "c++")) is None:
        _say("no C++ compiler found; installing without fastadv._C "
             "(the Triton and PyTorch backends remain)")
        _write_build_info(extension=False, cuda_kernels=False, why="no C++ compiler found")
        return []
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No fp contraction: the random start must round identically on every backend.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    cpu_ext = CppExtension("fastadv._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=["-fopenmp"])
    toolkit, why_not = _cuda_plan()
    if toolkit is None:
        BUILD_NOTE.append(f"building the CPU kernels only; CUDA kernels skipped: {why_not}. "
                          f"{FORCE_HINT}.")
        _write_build_info(extension=True, cuda_kernels=False, why=why_not)
        return [cpu_ext]

    # torch guessed CUDA_HOME from the nvcc on PATH, which may be a wrapper's prefix: use the
    # toolkit's own folder for nvcc, headers and -lcudart.
    cpp_extension.CUDA_HOME = toolkit.root
    os.environ["CUDA_HOME"] = toolkit.root
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    cuda_ext = CUDAExtension(
        "fastadv._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=[os.path.join(HERE, "csrc")] + toolkit.include_dirs,
        library_dirs=[toolkit_finder.link_shim(toolkit, build_temp)],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
    cuda_ext.cpu_fallback = None if _flag("FASTADV_BUILD_CUDA") else cpu_ext
    BUILD_NOTE.append(f"building the CPU and CUDA kernels (CUDA {toolkit.version} at "
                      f"{toolkit.root}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
    _write_build_info(extension=True, cuda_kernels=True, why=f"CUDA {toolkit.version} at "
                      f"{toolkit.root}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return [cuda_ext]


class BuildWithFallback(BuildExtension.with_options(use_ninja=True)):
    """In auto mode a failed CUDA build falls back to the CPU extension instead of failing."""

    def build_extension(self, ext):
        fallback = getattr(ext, "cpu_fallback", None)
        if fallback is None:
            return super().build_extension(ext)
        try:
            return super().build_extension(ext)
        except Exception as exc:  # compile or link error of the optional part
            reason = f"their build failed ({type(exc).__name__}: {str(exc).splitlines()[-1][:300]})"
        _say(f"building the CPU kernels only; CUDA kernels skipped: {reason}. {FORCE_HINT}.")
        _write_build_info(extension=True, cuda_kernels=False, why=reason)
        cpu = copy.copy(ext)
        cpu.sources = [s for s in ext.sources if not s.endswith(".cu")]
        cpu.libraries = [lib for lib in ext.libraries
                         if lib not in ("cudart", "c10_cuda", "torch_cuda")]
        cpu.library_dirs = list(fallback.library_dirs)
        cpu.include_dirs = [d for d in ext.include_dirs if d in fallback.include_dirs
                            or d == os.path.join(HERE, "csrc")]
        self.build_temp = os.path.join(self.build_temp, "cpu-fallback")
        return super().build_extension(cpu)

    def run(self):
        for line in BUILD_NOTE:
            _say(line)
        super().run()
        # A wheel carries the build info next to the extension it describes.
        target = os.path.join(self.build_lib, "fastadv", "_build_info.json")
        if not self.inplace and os.path.exists(BUILD_INFO) and os.path.isdir(os.path.dirname(target)):
            shutil.copyfile(BUILD_INFO, target)


def _build_temp():
    # Where setuptools would put it; only the cudart link shim lives there.
    return os.path.join(HERE, "build", "fastadv-link")


setup(
    ext_modules=_extensions(_build_temp()),
    cmdclass={"build_ext": BuildWithFallback},
)
