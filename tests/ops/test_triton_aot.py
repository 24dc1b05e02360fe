"""GPU truth without a GPU: the Triton kernels compiled for real, for sm_80,
sm_90 and sm_100, every variant the launchers launch (tests/tools/triton_aot.py records them from
the launchers themselves), and what their PTX and cubins show.

The compiling runs in one subprocess without TRITON_INTERPRET (conftest sets it for this
process, where @triton.jit functions are interpreter objects), spread over the CPU cores;
about a minute on two idle cores (Triton's cache makes reruns faster)."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

TRITON_AOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                          "triton_aot.py")
ARCHS = (80, 90, 100)


def _nvidia_backend_error():
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


pytestmark = pytest.mark.skipif(_nvidia_backend_error() is not None,
                                reason=f"Triton's NVIDIA backend: {_nvidia_backend_error()}")


@pytest.fixture(scope="module")
def aot():
    """The report of tests/tools/triton_aot.py: launched variants and one result per compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, TRITON_AOT], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout)
    for r in report["results"]:
        r["x_dtype"] = r["types"].get("x_ptr", "").lstrip("*")
    return report


def results_of(aot, kernel, arch=None):
    return [r for r in aot["results"] if r["kernel"] == kernel and arch in (None, r["arch"])]


def per_flags(r):
    """Which of eps/alpha/lower/upper are tensors: the l2 kernel's PER_* flags, the l-inf and
    random-start kernels' *_KIND constexprs (0 = a float)."""
    return tuple(v for k, v in r["constexprs"].items()
                 if k.startswith("PER_") or k.endswith("_KIND"))


def short(r):
    return (f"{r['kernel']} sm_{r['arch']} types={r['types']} constexprs={r['constexprs']} "
            f"aligned={r['divisible_by_16']} (from: {r['labels'][:2]})")


def test_every_launched_variant_compiles_for_sm80_sm90_sm100(aot):
    """Finding 1: per_index returned a block on one path and a scalar on the other, which
    the interpreter runs and the compiler rejects ("Return type mismatch"): every variant
    with a tensor eps, alpha, lower or upper failed to compile."""
    failed = [r for r in aot["results"] if not r["ok"]]
    assert not failed, "\n\n".join(f"{short(r)}\n{r['error'][-1500:]}" for r in failed[:3]) + (
        f"\n\n... {len(failed)} of {len(aot['results'])} compiles failed")


def test_compiled_variants_cover_every_launch(aot):
    """What tests/tools/triton_aot.py's plan promises: for sm_90 every constexpr combination of
    every kernel for every x dtype and every other specialisation Triton makes; for every
    arch every dtype mix (x with grad, best_x with loss)."""
    variants = aot["variants"]
    compiled = defaultdict(set)
    for r in aot["results"]:
        compiled[r["arch"]].add(r["variant"])
    kernels = {v["kernel"] for v in variants}
    assert kernels == {"_linf_step_kernel", "_l2_step_kernel", "_random_init_kernel",
                       "_keep_best_kernel"}
    combos = defaultdict(set)
    for i, v in enumerate(variants):
        combos[(v["kernel"], v["types"].get("x_ptr"), json.dumps(v["constexprs"],
                                                                   sort_keys=True))].add(i)
    missing = [k for k, ids in combos.items() if not ids & compiled[90]]
    assert not missing, missing[:5]
    mixes = defaultdict(set)
    for i, v in enumerate(variants):
        t = v["types"]
        mixes[(v["kernel"], t["x_ptr"], t.get("grad_ptr", t.get("loss_ptr")))].add(i)
    for arch in ARCHS:
        missing = [k for k, ids in mixes.items() if not ids & compiled[arch]]
        assert not missing, (arch, missing[:5])
    # The step kernels are launched with each of eps/alpha/lower/upper a float or a tensor.
    flags = {per_flags(r) for r in results_of(aot, "_linf_step_kernel", 90)}
    assert len(flags) == 16


def test_hot_linf_kernel_uses_128_bit_accesses(aot):
    """Finding 2, compiled: aligned pointers and a 16-divisible body give ld/st.global.v4
    for every dtype mix on every arch (three streams loaded, x stored)."""
    checked = 0
    for r in results_of(aot, "_linf_step_kernel"):
        streams = {"x_ptr", "grad_ptr", "x_nat_ptr", "body_numel"}
        if r["ok"] and streams <= set(r["divisible_by_16"]):
            checked += 1
            assert r["ptx"]["ld_global_v4"] >= 3 and r["ptx"]["st_global_v4"] >= 1, (
                short(r), r["ptx"])
    assert checked >= 9 * len(ARCHS)


def test_odd_sizes_and_offset_views_launch_the_vectorised_variant(aot):
    """Finding 2, launched: an odd numel (5x3x13x11) and views offset alike (x[3:]-style)
    get the aligned-body specialisation, hence the v4 PTX above; before, both got 32-bit
    accesses (numel and the pointers not divisible by 16)."""
    for label in ("linf_step odd numel", "linf_step common offset",
                  "random_init odd numel", "random_init common offset"):
        launched = [v for v in aot["variants"] if any(lb.startswith(label) for lb in v["labels"])]
        assert launched, label
        for v in launched:
            streams = {"x_ptr", "x_nat_ptr", "body_numel"}
            assert streams <= set(v["divisible_by_16"]), (label, v["divisible_by_16"])
    for r in results_of(aot, "_random_init_kernel"):
        if r["ok"] and {"x_ptr", "x_nat_ptr", "body_numel"} <= set(r["divisible_by_16"]):
            assert r["ptx"]["ld_global_v4"] >= 1 and r["ptx"]["st_global_v4"] >= 1, short(r)


def test_no_local_memory_or_spills(aot):
    for r in aot["results"]:
        if not r["ok"]:
            continue
        assert r["ptx"]["local"] == 0, short(r)
        usage = r["cubin"]
        assert usage, f"cuobjdump gave no resource usage for {short(r)}"
        assert usage.get("local", 0) == 0 and usage.get("stack", 0) == 0, (short(r), usage)


def test_l2_and_random_init_do_not_contract_to_fma(aot):
    """Finding 3: x + g*factor and x_nat + delta*shrink are rounded twice in the reference
    and the C++ kernels; contracted to FMAs (Triton's default) the l2 step differed in the
    last bit. No fma.rn.f32 at all in these kernels (32 in the l2 kernel before)."""
    checked = 0
    for kernel in ("_l2_step_kernel", "_random_init_kernel"):
        for r in results_of(aot, kernel):
            if r["ok"]:
                checked += 1
                assert r["ptx"]["fma_f32"] == 0, short(r)
                assert dict(r["options"])["enable_fp_fusion"] is False
    assert checked


def test_no_approximate_fp32_division_or_sqrt(aot):
    """tl.sqrt and / compile to sqrt.approx.f32 and div.full.f32 (up to 2 ulps off). The
    l2 norms and alpha/||g||, eps/||delta|| are correctly rounded in the reference and the
    C++ kernels, so the l2 kernel uses sqrt_rn and div_rn (2 of each approximation before);
    the block index math takes its reciprocal with div_rn as well."""
    checked = [r for r in aot["results"] if r["ok"]]
    assert checked
    for r in checked:
        assert r["ptx"]["approx_f32"] == 0, short(r)


def test_no_per_element_64_bit_division(aot):
    """Finding 5: the per-index variants found each element's example and channel with
    64-bit div/rem per element (div.s64 is a ~70-instruction subroutine). Now one 32-bit
    division per program and quantity (example; channel quotient and remainder), per block
    (body and tail; the head's start is 0), and the per-element part in int32 without any
    division: while the sizes fit in int32, no div/rem.s64 and at most 6 div/rem.s32 in
    all, where one per element would be 8 per quantity (1024 lanes on 128 threads)."""
    checked = 0
    for kernel in ("_linf_step_kernel", "_random_init_kernel"):
        for r in results_of(aot, kernel):
            if not r["ok"] or any(t == "i64" for t in r["types"].values()):
                continue
            checked += 1
            assert r["ptx"]["div_rem_64"] == 0, (short(r), r["ptx"])
            assert r["ptx"]["div_rem_32"] <= 6, (short(r), r["ptx"])
    assert checked
    all_per = [r for r in results_of(aot, "_linf_step_kernel", 90)
               if r["ok"] and all(per_flags(r)) and "i64" not in r["types"].values()]
    assert all_per and all(r["ptx"]["div_rem_32"] > 0 for r in all_per)  # it is there at all


# --------------------------------------------------------------------------- kinds and orders

# The issue 26 contract: each of eps/alpha/lower/upper of a kind (0 SCALAR .. 4 ELEMENT) and an
# ORDER of the update, all constexprs. tests/tools/triton_aot.py's plan launches the old calls
# (kinds=[], order 0); this records launches of the new kinds and orders with its recording
# driver and compiles each variant for sm_90 (H100/H200). Every parameter takes every kind in
# every order (the rows of a Latin square), for each x dtype, aligned and offset alike, and
# above 2**31 elements.
ORDERS_SCRIPT = r"""
import concurrent.futures, itertools, json, multiprocessing, sys

import torch

import triton_aot as A  # the subprocess runs in tests/tools
from fastadv import kernels

SHAPES = {s.name: s for s in A.ELEMENTWISE_SHAPES}
ROWS4 = [tuple((k + j) % 5 for j in range(4)) for k in range(5)]
ROWS3 = [tuple((k + j) % 5 for j in range(3)) for k in range(5)]


def param(kind, shape, offset):
    batch = shape.numel // shape.example_size
    if kind == 0:
        return None
    if kind == 4:  # ELEMENT: laid out like x, offset like grad and x_nat
        return A._tensor(shape.numel, torch.float32, offset, huge=shape.huge)
    return torch.full(({1: batch, 2: shape.channels, 3: batch * shape.channels}[kind],), 0.1)


def step(shape, x_dtype, g_dtype, kinds, order, legacy=False):
    def launch():
        x = A._tensor(shape.numel, x_dtype, shape.x_offset, huge=shape.huge)
        grad = A._tensor(shape.numel, g_dtype, shape.other_offset, huge=shape.huge)
        x_nat = A._tensor(shape.numel, x_dtype, shape.other_offset, huge=shape.huge)
        p = [param(k, shape, shape.other_offset) for k in kinds]
        extra = () if legacy else (list(kinds), order)
        kernels.linf_step(x, grad, x_nat, p[0], 0.03, p[1], 0.01, p[2], 0.0, p[3], 1.0,
                          shape.example_size, shape.channel_div, *extra)
    return launch


def start(shape, x_dtype, kinds, order, legacy=False):
    def launch():
        x = A._tensor(shape.numel, x_dtype, shape.x_offset, huge=shape.huge)
        x_nat = A._tensor(shape.numel, x_dtype, shape.other_offset, huge=shape.huge)
        p = [param(k, shape, shape.other_offset) for k in kinds]
        extra = () if legacy else (list(kinds), order)
        kernels.random_init(x, x_nat, torch.zeros(1, dtype=torch.int64), p[0], 0.03, p[1], 0.0,
                            p[2], 1.0, shape.example_size, shape.channel_div, *extra)
    return launch


def configurations():
    mixes = [("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "bf16")]
    for (xn, gn), kinds, order in itertools.product(mixes, ROWS4, range(4)):
        yield (f"linf aligned x={xn} grad={gn} kinds={kinds} order={order}",
               step(SHAPES["aligned"], A.DTYPES[xn], A.DTYPES[gn], kinds, order))
    for xn, kinds, order in itertools.product(A.DTYPES, ROWS3, range(4)):
        yield (f"random aligned x={xn} kinds={kinds} order={order}",
               start(SHAPES["aligned"], A.DTYPES[xn], kinds, order))
    for name, xn, order in itertools.product(("common offset", "2**31 elements"),
                                             ("fp32", "bf16"), (0, 3)):
        shape = SHAPES[name]
        yield (f"linf {name} x={xn} kinds=(3, 4, 4, 3) order={order}",
               step(shape, A.DTYPES[xn], A.DTYPES[xn], (3, 4, 4, 3), order))
        yield (f"random {name} x={xn} kinds=(4, 3, 4) order={order}",
               start(shape, A.DTYPES[xn], (4, 3, 4), order))
    # kinds=[] (the old calls) with tensors for eps and lower: the variants of their kinds.
    for legacy in (True, False):
        yield (f"linf legacy={legacy}",
               step(SHAPES["aligned"], torch.float32, torch.float32, (1, 0, 2, 0), 0, legacy))
        yield (f"random legacy={legacy}",
               start(SHAPES["aligned"], torch.float32, (1, 2, 0), 0, legacy))


variants = A.record(configurations())
A._VARIANTS = variants
tasks = [(i, 90) for i in range(len(variants))]
with concurrent.futures.ProcessPoolExecutor(
        int(sys.argv[1]), mp_context=multiprocessing.get_context("fork")) as pool:
    results = [{"variant": i, **r} for i, r in pool.map(A._compile_task, tasks, chunksize=4)]
json.dump({"variants": [v.describe() for v in variants], "results": results}, sys.stdout)
"""


@pytest.fixture(scope="module")
def aot_orders():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", ORDERS_SCRIPT, str(os.cpu_count() or 1)],
                          cwd=os.path.dirname(TRITON_AOT), env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout)


def kinds_and_order(r):
    return per_flags(r), r["constexprs"]["ORDER"]


def launched(report, prefix):
    return [v for v in report["variants"] if any(lb.startswith(prefix) for lb in v["labels"])]


def test_every_kind_and_order_compiles_for_sm90(aot_orders):
    failed = [r for r in aot_orders["results"] if not r["ok"]]
    assert not failed, "\n\n".join(f"{short(r)}\n{r['error'][-1500:]}" for r in failed[:3]) + (
        f"\n\n... {len(failed)} of {len(aot_orders['results'])} compiles failed")


def test_kinds_and_orders_are_the_only_new_constexprs(aot_orders):
    """One variant per (kinds, order) and x dtype: 20 for the step (5 rows x 4 orders), 15
    for the random start, whose order 1 is order 0 (the contract) and compiles as it; the
    old calls (kinds=[]) are the variants of their explicit kinds."""
    for prefix, kernel, count in (("linf aligned x=fp32", "_linf_step_kernel", 20),
                                  ("random aligned x=fp32", "_random_init_kernel", 15)):
        variants = launched(aot_orders, prefix)
        assert {v["kernel"] for v in variants} == {kernel}
        assert len(variants) == count, [kinds_and_order(v) for v in variants]
        assert len({kinds_and_order(v) for v in variants}) == count
    for v in launched(aot_orders, "random"):
        assert v["constexprs"]["ORDER"] != 1
        order_1 = [lb for lb in v["labels"] if lb.endswith("order=1")]
        assert not order_1 or any(lb.endswith("order=0") for lb in v["labels"]), v["labels"]
    for prefix, flags in (("linf legacy=True", (1, 0, 2, 0)),
                          ("random legacy=True", (1, 2, 0))):
        (v,) = launched(aot_orders, prefix)
        assert per_flags(v) == flags and v["constexprs"]["ORDER"] == 0
        assert prefix.replace("True", "False") in v["labels"], v["labels"]


def test_every_kind_and_order_keeps_the_compiled_properties(aot_orders):
    """What the tests above check of the old variants, for every kind and order: 128-bit
    accesses to x, grad and x_nat where aligned (also with ELEMENT tensors offset alike,
    which take part in the aligned split), no local memory or spills, no approximate
    division, no per-element 64-bit division (EXAMPLE_CHANNEL needs no more than an example
    and a channel), no FMA in the random start (e*u is inexact)."""
    checked = 0
    for r in aot_orders["results"]:
        if not r["ok"]:
            continue
        streams = ({"x_ptr", "grad_ptr", "x_nat_ptr", "body_numel"}
                   if r["kernel"] == "_linf_step_kernel" else {"x_ptr", "x_nat_ptr", "body_numel"})
        if streams <= set(r["divisible_by_16"]):
            loads = 3 if r["kernel"] == "_linf_step_kernel" else 1
            assert r["ptx"]["ld_global_v4"] >= loads and r["ptx"]["st_global_v4"] >= 1, (
                short(r), r["ptx"])
            checked += 1
        assert r["ptx"]["local"] == 0 and r["ptx"]["approx_f32"] == 0, (short(r), r["ptx"])
        assert r["cubin"].get("local", 0) == 0 and r["cubin"].get("stack", 0) == 0, short(r)
        if not any(t == "i64" for t in r["types"].values()):
            assert r["ptx"]["div_rem_64"] == 0 and r["ptx"]["div_rem_32"] <= 6, (short(r),
                                                                                  r["ptx"])
        if r["kernel"] == "_random_init_kernel":
            assert r["ptx"]["fma_f32"] == 0, short(r)
    assert checked >= 100
    for label in ("linf common offset", "random common offset"):
        for v in launched(aot_orders, label):
            assert {"x_ptr", "x_nat_ptr", "body_numel"} <= set(v["divisible_by_16"]), (
                label, v["divisible_by_16"])
