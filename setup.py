"""Builds fastadv._C from csrc/: the CPU kernels always, the CUDA kernels when a CUDA build
of torch and nvcc are present. FASTADV_BUILD_CUDA=1 forces the CUDA kernels (error if they
cannot be built), =0 skips them. TORCH_CUDA_ARCH_LIST is respected (default: 8.0;9.0+PTX, PTX for newer GPUs).
MAX_JOBS bounds parallel compilation. FASTADV_BUILD_EXT=0 installs the pure-Python package
(reference backend plus Triton) with no compiled extension, as happens by itself where no
C++ compiler is found (=1 insists on building)."""

import glob
import importlib.util
import os
import shutil

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() not in ("0", "false", "no", "")


def _build_cuda():
    forced = _flag("FASTADV_BUILD_CUDA")
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    possible = torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
    if forced and not possible:
        raise RuntimeError(
            "FASTADV_BUILD_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r} "
            "(install a CUDA build of torch and set CUDA_HOME to a toolkit with bin/nvcc)"
        )
    return possible if forced is None else forced


def _cuda_wheel_includes():
    # pip's CUDA torch ships the CUDA headers (cuda_runtime.h & co.) in nvidia/cu*/include.
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for root in spec.submodule_search_locations:
        found += sorted(glob.glob(os.path.join(root, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(root, "cuda_runtime", "include")))
    return found


def _extensions():
    if _flag("FASTADV_BUILD_EXT") is False:
        return []
    if _flag("FASTADV_BUILD_EXT") is None and shutil.which(os.environ.get("CXX", "c++")) is None:
        print("fastadv: no C++ compiler found; installing without fastadv._C "
              "(the Triton and PyTorch backends remain)")
        return []
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No fp contraction: the random start must round identically on every backend.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if not _build_cuda():
        return [CppExtension("fastadv._C", sources, extra_compile_args={"cxx": cxx},
                             extra_link_args=["-fopenmp"])]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    return [
        CUDAExtension(
            "fastadv._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=[os.path.join(HERE, "csrc")] + _cuda_wheel_includes(),
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
            },
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
