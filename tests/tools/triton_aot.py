"""Compile fastadv's Triton kernels for real GPUs on a machine without one.

Triton's interpreter (TRITON_INTERPRET=1, what the other tests run) accepts code the real
compiler rejects, so this compiles the variants the launchers in ``kernels/`` launch with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reads the PTX
and the cubin's resource usage.

The variants are not listed by hand: the launchers themselves run, on CPU tensors, under a
recording driver. Triton's own JIT binds their arguments and specialises them (types,
constexprs, 16-byte alignment, enable_fp_fusion, ...) exactly as on a GPU; a
``jit_cache_hook`` records each compile request and stops it before the launch. So what is
compiled here is what a GPU would compile for the same calls.

The launches cover every argument kind the op layer passes (``configurations``): ~1,400
distinct variants. Compiling all for three archs takes ~30 CPU-minutes (``--plan all``), so
the default plan compiles a cover (``requirements``): for sm_90 every constexpr combination
of every kernel for every x dtype, and every other specialisation; for sm_80, sm_90 and
sm_100 every dtype mix. ~380 compiles, ~1.5 CPU-minutes.

Run it as a script, in a process where TRITON_INTERPRET is unset (the pytest process has it
set before triton was imported, and that turns every @triton.jit into an interpreter object)::

    python tests/tools/triton_aot.py [--plan cover|all] [--jobs N]   # JSON on stdout
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ARCHS = (80, 90, 100)
HOT_ARCH = 90  # H100/H200: the cover is widest for it

if os.environ.get("TRITON_INTERPRET", "0") == "1" and __name__ == "__main__":
    sys.exit("run without TRITON_INTERPRET=1: the interpreter replaces the JIT")

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from fastadv import kernels  # noqa: E402  (--kernels swaps in another copy, e.g. an old one)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- recording


class _RecordingDriver:
    """Just enough of a Triton driver for JITFunction.run to bind and specialise: it
    reports a CUDA target; nothing reaches a device because the cache hook stops it."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@dataclass(frozen=True)
class Variant:
    """One compile request of a launcher: the kernel and Triton's specialisation of it."""

    kernel: str
    fn: object  # the JITFunction
    signature: tuple  # ((param, type), ...) with "constexpr" for constexprs
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, (("tt.divisibility", 16), ...)), ...)
    options: tuple  # ((name, value), ...): num_warps, enable_fp_fusion, ...
    labels: tuple = ()  # where it was launched from (configuration labels)

    def key(self):
        return (self.kernel, self.signature, self.constexprs, self.attrs, self.options)

    def describe(self) -> dict:
        names = [n for n, _ in self.signature]
        consts = {names[p[0]]: v for p, v in self.constexprs}
        types = {n: t for n, t in self.signature if t != "constexpr"}
        aligned = sorted(names[p[0]] for p, a in self.attrs if a)
        return {"kernel": self.kernel, "types": types, "constexprs": consts,
                "divisible_by_16": aligned, "options": dict(self.options),
                "labels": list(self.labels)}


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _attrs(compile: dict) -> dict:
    """The specialisation attributes of a compile request ({(arg index,): [[attr, value]]})."""
    configs = compile.get("configs")
    return configs[0] if configs else compile.get("attrs", {})


def record(configurations) -> list[Variant]:
    """Runs each (label, launch) of `configurations` under the recording driver and returns
    the distinct compile requests, each with the labels of the launches that made it."""
    found: dict = {}
    label = None

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        jit_fn = fn.jit_function
        v = Variant(
            kernel=jit_fn.fn.__name__, fn=jit_fn,
            signature=tuple(compile["signature"].items()),
            constexprs=tuple(sorted(compile["constants"].items())),
            attrs=tuple(sorted((k, _freeze(v)) for k, v in _attrs(compile).items())),
            options=(("num_warps", compile["num_warps"]), ("num_stages", compile["num_stages"]),
                     ("enable_fp_fusion", compile["enable_fp_fusion"])),
        )
        previous = found.get(v.key())
        labels = (previous.labels if previous else ()) + (label,)
        found[v.key()] = Variant(**{**v.__dict__, "labels": labels})
        return True  # skip the compile (and so the launch): only record

    old_hook = knobs.runtime.jit_cache_hook
    old_driver = getattr(driver, "_active", None)  # reset_active() needs a real GPU
    driver.set_active(_RecordingDriver(HOT_ARCH))
    knobs.runtime.jit_cache_hook = hook
    try:
        for label, launch in configurations:
            launch()
    finally:
        knobs.runtime.jit_cache_hook = old_hook
        driver._active = old_driver
    return list(found.values())


# --------------------------------------------------------------------------- configurations


def _tensor(numel, dtype, offset=0, *, huge=False):
    """A flat tensor of `numel` elements whose data starts `offset` elements into a fresh
    (16-byte aligned) allocation. huge: an expanded view (no memory behind it: recording
    never touches the data)."""
    if huge:
        return torch.zeros(16, dtype=dtype)[offset:offset + 1].expand(numel)
    return torch.zeros(numel + offset, dtype=dtype)[offset:]


@dataclass(frozen=True)
class Shape:
    """How the flat tensors of a call look to the launchers."""

    name: str
    numel: int
    example_size: int
    channel_div: int
    channels: int
    x_offset: int = 0  # elements from an aligned address
    other_offset: int = 0
    huge: bool = False


ELEMENTWISE_SHAPES = [
    Shape("aligned", 2 * 3 * 32 * 32, 3 * 32 * 32, 32 * 32, 3),
    Shape("odd numel", 5 * 3 * 13 * 11, 3 * 13 * 11, 13 * 11, 3),
    Shape("common offset", 4 * 3 * 9 * 9, 3 * 9 * 9, 9 * 9, 3, x_offset=3, other_offset=3),
    Shape("offsets differ", 4 * 3 * 9 * 9, 3 * 9 * 9, 9 * 9, 3, x_offset=1),
    Shape("2**31 elements", 2**31 + 5, 3 * 224 * 224, 224 * 224, 3, huge=True),
    Shape("one 2**31 example", 2**31 + 5, 2**31 + 5, 2**31 // 3, 3, huge=True),
]
L2_SHAPES = [
    Shape("examples of 16n", 2 * 3 * 32 * 32, 3 * 32 * 32, 32 * 32, 3),
    Shape("examples of 16n+7", 2 * 1031, 1031, 1031, 1),
    Shape("small examples of 16n", 4 * 48, 48, 16, 3),
    Shape("small odd examples", 5 * 3 * 13, 3 * 13, 13, 3),
    Shape("examples of 1", 7, 1, 1, 1),
    Shape("offset views", 2 * 3 * 32 * 32, 3 * 32 * 32, 32 * 32, 3, x_offset=1, other_offset=1),
    Shape("2**31 elements", 2**31, 2**31 // 4, 2**31 // 12, 3, huge=True),
]
KEEP_BEST_SHAPES = [L2_SHAPES[i] for i in (0, 1, 3, 4, 6)]
FLAGS4 = list(itertools.product([False, True], repeat=4))
FLAGS3 = list(itertools.product([False, True], repeat=3))


def _params(shape: Shape, per_example: bool):
    batch = shape.numel // shape.example_size
    return torch.full((batch,), 0.1) if per_example else None


def _bounds(shape: Shape, per_channel: bool, value: float):
    return torch.full((shape.channels,), value) if per_channel else None


def _step_call(launcher, shape, x_dtype, g_dtype, flags):
    def launch():
        x = _tensor(shape.numel, x_dtype, shape.x_offset, huge=shape.huge)
        grad = _tensor(shape.numel, g_dtype, shape.other_offset, huge=shape.huge)
        x_nat = _tensor(shape.numel, x_dtype, shape.other_offset, huge=shape.huge)
        eps_t, alpha_t, lower_t, upper_t = flags
        launcher(x, grad, x_nat, _params(shape, eps_t), 0.03, _params(shape, alpha_t), 0.01,
                 _bounds(shape, lower_t, 0.0), 0.0, _bounds(shape, upper_t, 1.0), 1.0,
                 shape.example_size, shape.channel_div)
    return launch


def _random_init_call(shape, x_dtype, flags):
    def launch():
        x = _tensor(shape.numel, x_dtype, shape.x_offset, huge=shape.huge)
        x_nat = _tensor(shape.numel, x_dtype, shape.other_offset, huge=shape.huge)
        eps_t, lower_t, upper_t = flags
        kernels.random_init(x, x_nat, torch.zeros(1, dtype=torch.int64), _params(shape, eps_t),
                            0.03, _bounds(shape, lower_t, 0.0), 0.0, _bounds(shape, upper_t, 1.0),
                            1.0, shape.example_size, shape.channel_div)
    return launch


def _keep_best_call(shape, x_dtype, loss_dtype):
    def launch():
        batch = shape.numel // shape.example_size
        kernels.keep_best(_tensor(shape.numel, x_dtype, huge=shape.huge),
                          torch.zeros(batch, dtype=loss_dtype),
                          _tensor(shape.numel, x_dtype, huge=shape.huge),
                          torch.zeros(batch, dtype=loss_dtype), shape.example_size)
    return launch


def configurations():
    """(label, launch) for every argument kind the op layer (fastadv/ops.py) passes to the
    Triton launchers: x fp32/fp16/bf16 (fp64 runs the reference), grad in any of those,
    each of eps/alpha/lower/upper a float or a tensor, sizes below and above 2**31
    elements, odd sizes, views offset alike and x offset alone (one of the alignment
    patterns Triton specialises on, each a variant); keep_best's loss in any float dtype."""
    for shape, (xn, x_dtype), (gn, g_dtype), flags in itertools.product(
            ELEMENTWISE_SHAPES, DTYPES.items(), DTYPES.items(), FLAGS4):
        yield (f"linf_step {shape.name} x={xn} grad={gn} tensors(eps,alpha,lower,upper)={flags}",
               _step_call(kernels.linf_step, shape, x_dtype, g_dtype, flags))
    for shape, (xn, x_dtype), (gn, g_dtype), flags in itertools.product(
            L2_SHAPES, DTYPES.items(), DTYPES.items(), FLAGS4):
        yield (f"l2_step {shape.name} x={xn} grad={gn} tensors(eps,alpha,lower,upper)={flags}",
               _step_call(kernels.l2_step, shape, x_dtype, g_dtype, flags))
    for shape, (xn, x_dtype), flags in itertools.product(
            ELEMENTWISE_SHAPES, DTYPES.items(), FLAGS3):
        yield (f"random_init {shape.name} x={xn} tensors(eps,lower,upper)={flags}",
               _random_init_call(shape, x_dtype, flags))
    loss_dtypes = {**DTYPES, "fp64": torch.float64}
    for shape, (xn, x_dtype), (ln, l_dtype) in itertools.product(
            KEEP_BEST_SHAPES, DTYPES.items(), loss_dtypes.items()):
        yield (f"keep_best {shape.name} x={xn} loss={ln}", _keep_best_call(shape, x_dtype, l_dtype))


# --------------------------------------------------------------------------- compiling

_VEC_LOAD = re.compile(r"\bld\.global(?:\.[\w:]+)*\.v4\.")
_VEC_STORE = re.compile(r"\bst\.global(?:\.[\w:]+)*\.v4\.")
_SCALAR_LOAD = re.compile(r"\bld\.global(?:\.[\w:]+)*\.(?:b16|b32|f32|u16|u32)\s")
_FMA = re.compile(r"\bfma\.rn(?:\.ftz)?\.f32\b")
_DIV64 = re.compile(r"\b(?:div|rem)\.[su]64\b")
_DIV32 = re.compile(r"\b(?:div|rem)\.[su]32\b")
_LOCAL = re.compile(r"\.local\b")
_APPROX = re.compile(r"\b(?:sqrt\.approx|div\.full|div\.approx|rcp\.approx)(?:\.ftz)?\.f32\b")


def _cuobjdump() -> str:
    tool = getattr(getattr(knobs, "nvidia", None), "cuobjdump", None)  # Triton >= 3.4
    if tool is not None and getattr(tool, "path", None):
        return tool.path
    from triton.backends import nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def _resource_usage(cubin: bytes) -> dict:
    """REG/STACK/SHARED/LOCAL of the cubin as cuobjdump reports them (no GPU needed)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                             capture_output=True, text=True).stdout
    usage = {}
    for name in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{name}:(\d+)", out)
        if m:
            usage[name.lower()] = int(m.group(1))
    return usage


def ptx_stats(ptx: str) -> dict:
    return {
        "ld_global_v4": len(_VEC_LOAD.findall(ptx)),
        "st_global_v4": len(_VEC_STORE.findall(ptx)),
        "ld_global_scalar": len(_SCALAR_LOAD.findall(ptx)),
        "fma_f32": len(_FMA.findall(ptx)),
        "div_rem_64": len(_DIV64.findall(ptx)),
        "div_rem_32": len(_DIV32.findall(ptx)),
        "local": len(_LOCAL.findall(ptx)),
        "approx_f32": len(_APPROX.findall(ptx)),
    }


def _error_text(exc: BaseException) -> str:
    """The error with its causes (Triton's CompilationError names the line; the cause says
    what is wrong there)."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {exc}"[-2000:])
        exc = exc.__cause__ or exc.__context__
    return "\n-- caused by --\n".join(parts)


def compile_variant(variant: Variant, arch: int) -> dict:
    """Compiles one variant for sm_<arch>; the outcome and what its PTX/cubin show."""
    src = ASTSource(variant.fn, dict(variant.signature), dict(variant.constexprs),
                    {k: [list(a) for a in v] for k, v in variant.attrs})
    result = {"arch": arch, **variant.describe()}
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(variant.options))
    except Exception as exc:  # the point of the exercise: report, do not crash
        result.update(ok=False, error=_error_text(exc))
        return result
    result.update(ok=True, ptx=ptx_stats(compiled.asm["ptx"]),
                  cubin=_resource_usage(compiled.asm["cubin"]))
    return result


def _x_and_other_dtypes(v: Variant) -> tuple:
    """The element types of the tensors the kernel streams (x first), e.g. ('fp32', 'bf16')."""
    types = dict(v.signature)
    streamed = ("x_ptr", "grad_ptr") if "grad_ptr" in types else ("x_ptr", "best_x_ptr", "loss_ptr")
    return tuple(types[n].lstrip("*") for n in streamed if n in types)


def _specialisation(v: Variant) -> tuple:
    """What Triton specialised on besides dtypes and our constexprs: integer widths,
    16-byte alignment, integers equal to 1."""
    d = v.describe()
    ints = tuple(sorted((n, t) for n, t in d["types"].items() if not t.startswith(("*", "fp"))))
    ones = tuple(sorted(n for n, c in d["constexprs"].items() if n.islower()))
    return ints, tuple(d["divisible_by_16"]), ones


def _flags(v: Variant) -> tuple:
    """Per parameter: a tensor (True) or a float (False), from PER_* flags or *_KIND kinds."""
    items = v.describe()["constexprs"].items()
    return tuple(bool(val) for name, val in items
                 if name.startswith("PER_") or name.endswith("_KIND"))


def requirements(v: Variant) -> list[tuple]:
    """The cover requirements (arch, what) that compiling v for arch would meet:

    - sm_90: every constexpr combination of every kernel for every x dtype;
    - every arch: every dtype mix (x with grad; best_x with loss) with all per-index
      parameters floats, and with all tensors;
    - sm_90: every other specialisation Triton makes (unaligned pointers, 64-bit sizes,
      sizes equal to 1), with all parameters floats and with all tensors."""
    d = v.describe()
    dtypes = _x_and_other_dtypes(v)
    flags = _flags(v)
    uniform = len(set(flags)) <= 1
    reqs = [(HOT_ARCH, "constexprs", v.kernel, dtypes[0], tuple(sorted(d["constexprs"].items())))]
    if uniform:
        common = _specialisation(v)[1] and not any(t == "i64" for t in d["types"].values())
        if common:
            reqs += [(arch, "dtypes", v.kernel, dtypes, flags) for arch in ARCHS]
        reqs.append((HOT_ARCH, "specialisation", v.kernel, _specialisation(v), flags))
    return reqs


def plan(variants: list[Variant], kind: str = "cover") -> list[tuple[int, int]]:
    """(variant index, arch) pairs to compile. cover: the fewest pairs (greedily) that meet
    every requirement() of every launched variant; all: every variant for every arch."""
    if kind == "all":
        return [(i, arch) for i in range(len(variants)) for arch in ARCHS]
    needed = {r for v in variants for r in requirements(v)}
    pairs = []
    # Variants that meet most requirements first, so few compiles cover all of them.
    order = sorted(range(len(variants)), key=lambda i: -len(requirements(variants[i])))
    for i in order:
        for arch in ARCHS:
            met = {r for r in requirements(variants[i]) if r[0] == arch} & needed
            if met:
                needed -= met
                pairs.append((i, arch))
    assert not needed, needed
    return pairs


_VARIANTS: list[Variant] = []


def _compile_task(task):
    i, arch = task
    return i, compile_variant(_VARIANTS[i], arch)


def run(kind: str = "cover", jobs: int | None = None) -> dict:
    """Records the variants, compiles the plan (in `jobs` processes) and returns a JSON-able
    report: the variants and one result per (variant, arch) compiled."""
    global _VARIANTS
    _VARIANTS = record(configurations())
    pairs = plan(_VARIANTS, kind)
    jobs = jobs or os.cpu_count() or 1
    results = []
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for i, r in pool.map(_compile_task, pairs, chunksize=4):
                results.append({"variant": i, **r})
    else:
        results = [{"variant": i, **_compile_task((i, a))[1]} for i, a in pairs]
    return {"triton": triton.__version__,
            "variants": [v.describe() for v in _VARIANTS], "results": results}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="cover", choices=("cover", "all"))
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--kernels", metavar="DIR",
                        help="a directory holding another copy of kernels/ (e.g. from git "
                             "show HEAD~1) to compile instead of fastadv.kernels")
    args = parser.parse_args(argv)
    if args.kernels:
        global kernels
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "aot_kernels", os.path.join(args.kernels, "__init__.py"),
            submodule_search_locations=[args.kernels])
        kernels = importlib.util.module_from_spec(spec)
        sys.modules["aot_kernels"] = kernels
        spec.loader.exec_module(kernels)
    json.dump(run(args.plan, args.jobs), sys.stdout)


if __name__ == "__main__":
    main()
