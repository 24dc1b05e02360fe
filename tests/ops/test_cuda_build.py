"""tests/tools/cuda_build_check.py, the CI step that compiles the CUDA kernels without a GPU: its
reading of ptxas and SASS output (always), and one real compile where nvcc is present (the
kernel that once spilled, for sm_90 only; CI runs the full check for sm_80 and sm_90)."""

import subprocess
import sys

import pytest

from tools import cuda_build_check as check

MANGLED = ("_ZN7fastadv4cuda53_GLOBAL__N__1b6b613c_14_random_init_cu_a25a377b_1965518"
           "random_init_kernelIfLi4ELb1EEEvPT_PKS3_PKlNS_8PerIndexES9_S9_NS_6LayoutENS0_8VecSplitE")

# What nvcc -Xptxas -v and cuobjdump -sass printed for random_init_kernel<float, 4, true> on
# sm_90 before it was fixed (trimmed).
SPILLING_PTXAS = f"""\
ptxas info    : Compiling entry function '{MANGLED}' for 'sm_90'
ptxas info    : Function properties for {MANGLED}
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 8 bytes cumulative stack size
"""
SPILLING_SASS = f"""\
\t\tFunction : {MANGLED}
        /*02f0*/                   LDG.E.128.CONSTANT R16, desc[UR6][R6.64] ;
        /*17b0*/                   STL [R1], R0 ;
        /*1880*/                   LDL.LU R0, [R1] ;
        /*2b80*/                   STG.E.128 desc[UR6][R8.64], R16 ;
        /*2b90*/                   STG.E desc[UR6][R8.64], R16 ;
"""


def test_reads_a_spill_as_a_failure():
    kernel = check.parse_ptxas(SPILLING_PTXAS)[MANGLED]
    assert (kernel.arch, kernel.registers, kernel.stack) == (90, 64, 8)
    assert (kernel.spill_stores, kernel.spill_loads) == (4, 4)
    kernel.ldg128, kernel.stg128, kernel.local = check.count_sass(SPILLING_SASS)[MANGLED]
    assert (kernel.ldg128, kernel.stg128, kernel.local) == (1, 1, 2)
    check.judge(kernel)
    assert any("spills 4 B" in p for p in kernel.problems)
    assert any("stack frame" in p for p in kernel.problems)
    assert any("LDL/STL" in p for p in kernel.problems)


def test_reads_missing_wide_accesses_as_a_failure():
    kernel = check.Kernel("k", 80, registers=32)
    kernel.ldg128, kernel.stg128, kernel.local = 2, 0, 0
    check.judge(kernel)
    assert kernel.problems == ["no 128-bit global stores"]
    clean = check.Kernel("k", 80, registers=32, ldg128=1, stg128=1)
    check.judge(clean)
    assert clean.problems == []


def _nvcc_or_none():
    try:
        return check.find_nvcc()
    except check.ToolError:
        return None


@pytest.mark.skipif(_nvcc_or_none() is None, reason="needs nvcc (a CUDA toolkit)")
def test_random_init_compiles_without_spills_for_sm90():
    out = subprocess.run(
        [sys.executable, check.__file__, "--arch", "90", "--only", "random_init"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "random_init_kernel<float, 4, 0, 1>" in out.stdout  # order 0, per-index runs
    assert "random_init_kernel<float, 4, 2, 2>" in out.stdout  # the perturbation form
    assert "cuda_build_check: ok" in out.stdout
