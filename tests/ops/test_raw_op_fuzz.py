"""Raw-op fuzz: every registered fastadv op (enumerated from the dispatcher, so a new op is
covered without editing this file), called directly with random shapes (0-size, one element,
odd), strides (contiguous, channels_last, permuted, sliced, expanded, offset, odd strides of
size-1 dims), dtypes and integer arguments from 0, -1, 1, 2**31, 2**62, 2**63-1 and -2**63 to
values that fit the tensors. Each call must succeed or raise RuntimeError, ValueError,
TypeError or IndexError: never crash the process.

The calls run in a subprocess (this file run as a script), which prints each call before
making it: a crash (a signal, e.g. SIGFPE from a division by a zero period) fails the test
with the offending call, instead of killing pytest.

The Triton launchers are raw ops launched from Python: the op layer checks their arguments
with fastadv/_kernel_checks.py, the twin of csrc/checks.h. Each raw C++ kernel call is checked
there too, and the two must agree (same exception type and message, or both accept); where
Triton runs here (its interpreter, on the CPU) some of the calls launch it as well, and the
registered ops run on every backend available."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

SEED = 20250219
CALLS = 4000
FLOOR = 3500  # the fuzz must make at least this many calls
TRITON_LAUNCHES = 120  # calls that may run a Triton kernel in its (slow) interpreter
ALLOWED = (RuntimeError, ValueError, TypeError, IndexError)
SUMMARY = "FUZZ-SUMMARY "
CALL = "CALL "

INT_EXTREMES = [0, -1, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -2**63, -2**31]
FLOATS = [0.0, 0.1, 8 / 255, 1.0, -1.0, -0.0, 1e38, float("nan"), float("inf"), float("-inf")]
NORMS = ["linf", "l2", "linf", "l2", "", "Linf", "foo"]
SIZES = [0, 1, 1, 2, 2, 3, 3, 4, 5, 7]
# Names of tensor arguments, by role (the schemas of csrc/fastadv.cpp and fastadv/ops.py).
MAIN = {"x", "x_adv", "best_x"}
LIKE_MAIN = {"grad", "x_nat"}
PER_EXAMPLE = {"eps", "alpha", "eps_t", "alpha_t", "loss", "best_loss"}
PER_CHANNEL = {"lower", "upper", "lower_t", "upper_t"}


# --------------------------------------------------------------------------- the driver


def _driver(seed: int, calls: int) -> None:
    import importlib

    import torch

    from fastadv import _kernel_checks, backends, ops  # ops registers the Python ops
    from fastadv._layout import flat_layout

    importlib.import_module("fastadv._C")  # registers the kernel ops
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dtypes = [torch.float32] * 4 + [torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                    torch.int64, torch.bool]
    float_dtypes = [torch.float32] * 3 + [torch.float16, torch.bfloat16, torch.float64]
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("fastadv::"))
    schemas = {n: getattr(torch.ops.fastadv, n).default._schema for n in names}
    cpu_backends = backends.available("cpu")
    triton_here = "triton" in cpu_backends  # interpreted: CPU tensors
    launches_left = TRITON_LAUNCHES if triton_here else 0

    def values(shape, dtype):
        if dtype is torch.bool:
            return torch.rand(shape) > 0.5
        if not dtype.is_floating_point:
            return torch.randint(-5, 5, shape, dtype=dtype)
        t = torch.rand(shape) * 1.5 - 0.25
        if t.numel() and rng.random() < 0.1:
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf])
        return t.to(dtype)

    def tensor(shape, dtype, layout):
        """A tensor of `shape` and `dtype` laid out as `layout`."""
        shape = tuple(shape)
        rank = len(shape)
        if layout == "channels_last" and rank == 4:
            return values(shape, dtype).contiguous(memory_format=torch.channels_last)
        if layout == "permuted" and rank >= 2:
            perm = list(range(rank))
            rng.shuffle(perm)
            base = values([shape[p] for p in perm], dtype)
            return base.permute(*[perm.index(d) for d in range(rank)])
        if layout == "sliced" and rank >= 1:
            big = values(shape[:-1] + (shape[-1] * 2,), dtype)
            return big[..., ::2]
        if layout == "expanded" and rank >= 1:
            d = rng.randrange(rank)
            small = values(shape[:d] + (1,) + shape[d + 1:], dtype)
            return small.expand(shape)
        if layout == "offset":  # a pointer one element past an allocation's alignment
            flat = values((math.prod(shape) + 1,), dtype)
            return flat[1:].view(shape)
        if layout == "odd_size1_strides" and 1 in shape:
            t = values(shape, dtype)
            strides = [rng.choice([0, 1, 3, 2**20]) if s == 1 else st
                       for s, st in zip(shape, t.stride())]
            return t.as_strided(shape, strides)
        if layout == "transposed" and rank >= 2:
            return values(shape[:-2] + (shape[-1], shape[-2]), dtype).transpose(-1, -2)
        return values(shape, dtype)

    dense_layouts = ["contiguous"] * 4 + ["channels_last", "permuted", "offset",
                                          "odd_size1_strides", "transposed"]
    layouts = dense_layouts + ["sliced", "expanded"]
    kernel_dtypes = [torch.float32, torch.float32, torch.float16, torch.bfloat16]

    def random_shape():
        if rng.random() < 0.03:  # a channel period beyond the CPU walk's 4096-element tables
            return [2, 3, 40, 45]
        return [rng.choice(SIZES) for _ in range(rng.choice([0, 1, 2, 2, 3, 4, 4, 4]))]

    def table(length, dtype, contiguous):
        if contiguous or length < 2:
            return values((length,), dtype)
        return values((length * 2,), dtype)[::2]

    def divisors(n):
        return [d for d in range(1, min(n, 64) + 1) if n % d == 0] or [1]

    def plausible_int(name, main):
        """What the op layer would pass for `main` (fastadv._layout.flat_layout), or near."""
        layout = flat_layout(main) if main is not None else None
        example_size, channel_div = layout if layout is not None else (1, 1)
        if name == "example_size":
            return rng.choice([example_size] * 4 + divisors(example_size))
        if name == "channel_div":
            return rng.choice([channel_div] * 4 + [1] + divisors(example_size))
        if name == "order":
            return rng.choice([0, 0, 1, 2, 3])
        return rng.choice([1, 2, example_size])

    def arguments(schema):
        """Random arguments for `schema`, by type and role: half of the calls wild, half
        close to what the op layer passes (each argument valid with probability ~0.97), so
        that both sides of every check and the kernels behind them are reached."""
        wild = rng.random() < 0.5
        near = (lambda: rng.random() < 0.97) if not wild else (lambda: rng.random() < 0.6)
        shape = random_shape()
        dtype = rng.choice(dtypes) if wild else rng.choice(kernel_dtypes)
        layout = rng.choice(layouts if wild else dense_layouts)
        main = None
        # Near calls: one integer argument out of range with the others as the op layer's.
        ints = [a.name for a in schema.arguments if str(a.type) == "int"]
        extreme = rng.choice(ints) if ints and not wild and rng.random() < 0.3 else None
        batch = shape[0] if shape else 1
        channels = shape[1] if len(shape) > 1 else 1
        args = []
        for arg in schema.arguments:
            kind, name = str(arg.type), arg.name
            if kind in ("Tensor", "Optional[Tensor]"):
                if kind == "Optional[Tensor]" and rng.random() < 0.4:
                    args.append(None)
                    continue
                if name in MAIN and main is None:
                    main = tensor(shape, dtype, layout)
                    args.append(main)
                elif name in MAIN or name in LIKE_MAIN:
                    t_shape = shape if near() else random_shape()
                    t_dtype = dtype if near() else rng.choice(dtypes)
                    t_layout = layout if near() else rng.choice(layouts)
                    args.append(tensor(t_shape, t_dtype, t_layout))
                elif name in PER_EXAMPLE:
                    length = batch if near() else rng.choice([0, 1, batch + 1, 3])
                    t_dtype = torch.float32 if near() else rng.choice(float_dtypes)
                    if name in ("loss", "best_loss") and rng.random() < 0.5:
                        t_dtype = rng.choice(kernel_dtypes)
                    args.append(table(length, t_dtype, contiguous=near()))
                elif name in PER_CHANNEL:
                    length = (rng.choice([channels] * 3 + [1]) if near()
                              else rng.choice([0, 2, 3, channels + 1]))
                    t = table(length, torch.float32 if near() else rng.choice(float_dtypes),
                              contiguous=near())
                    if len(shape) > 2 and length == channels and rng.random() < 0.3:
                        t = t.reshape([length] + [1] * (len(shape) - 2))  # [C, 1, 1]
                    args.append(t)
                elif name == "seed":
                    value = rng.choice(INT_EXTREMES)
                    seed_shape = (1,) if near() else rng.choice([(0,), (3,), ()])
                    seed_dtype = torch.int64 if near() else rng.choice([torch.int32,
                                                                        torch.float32])
                    args.append(torch.full(seed_shape, value if seed_dtype == torch.int64
                                           else value % 1000, dtype=seed_dtype))
                else:  # a tensor of a role this fuzz does not know: anything
                    args.append(tensor(random_shape(), rng.choice(dtypes), rng.choice(layouts)))
            elif kind == "int":
                if near() and name != extreme:
                    args.append(plausible_int(name, main))
                elif rng.random() < 0.8:
                    args.append(rng.choice(INT_EXTREMES))
                else:
                    args.append(rng.randrange(-2**63, 2**63))
            elif kind == "List[int]":  # kinds: one per parameter tensor before it, or none
                tables = [(a.name, v) for a, v in zip(schema.arguments, args)
                          if str(a.type) == "Optional[Tensor]"]
                if near() and rng.random() < 0.3:
                    args.append([])
                elif near():
                    args.append([0 if v is None else rng.choice(
                        [1 if n in PER_EXAMPLE else 2] * 3 + [1, 2, 3, 4]) for n, v in tables])
                else:
                    args.append([rng.choice([-1, 0, 1, 2, 3, 4, 5, 2**40])
                                 for _ in range(rng.choice([0, 1, len(tables), 5]))])
            elif kind == "float":
                args.append(rng.choice(FLOATS))
            elif kind == "str":
                args.append(rng.choice(NORMS[:2]) if near() else rng.choice(NORMS))
            elif kind == "bool":
                args.append(rng.random() < 0.5)
            else:
                raise SystemExit(f"fuzz: no generator for argument {name}: {kind} of "
                                 f"{schema.name}; extend tests/ops/test_raw_op_fuzz.py")
        return args

    def describe(a):
        if isinstance(a, torch.Tensor):
            return (f"T{list(a.shape)}/{list(a.stride())}/{str(a.dtype)[6:]}"
                    f"+{a.storage_offset()}")
        return repr(a)

    def same_layout_copy(a):
        """a's values in a copy of its storage: the same strides and offset, any layout."""
        copy = torch.empty(0, dtype=a.dtype)
        return copy.set_(a.untyped_storage().clone(), a.storage_offset(), a.shape, a.stride())

    def outcome(fn):
        try:
            fn()
        except ALLOWED as exc:
            return type(exc).__name__, str(exc)
        return None

    counts = {n: {"calls": 0, "ok": 0, "raised": 0} for n in names}
    triton_counts = {"checked": 0, "launched": 0}
    unexpected, mismatches = [], []
    start = time.perf_counter()
    for i in range(calls):
        name = rng.choice(names)
        uses_triton = name == "_pgd_triton_"
        if uses_triton and launches_left <= 0:
            name = rng.choice([n for n in names if n != "_pgd_triton_"])
            uses_triton = False
        args = arguments(schemas[name])
        backend = None
        if not name.endswith("_kernel_") and not name.startswith("_"):
            choices = [b for b in cpu_backends if b != "triton" or launches_left > 0]
            backend = rng.choice(choices)
            uses_triton = backend == "triton"
        if uses_triton:
            launches_left -= 1
        os.environ["FASTADV_BACKEND"] = backend or ""
        print(f"{CALL}{i} fastadv::{name} backend={backend} "
              f"({', '.join(describe(a) for a in args)})", flush=True)
        op = getattr(torch.ops.fastadv, name)
        kernel = name[1:-len("_kernel_")] if name.endswith("_kernel_") else None
        copies = [same_layout_copy(a) if isinstance(a, torch.Tensor) else a for a in args]
        python_rule = None
        if kernel is not None:
            python_rule = outcome(lambda: _kernel_checks.launcher_args(kernel, args[0],
                                                                       tuple(args[1:])))
        try:
            op(*args)
            result = None
        except ALLOWED as exc:
            result = (type(exc).__name__, str(exc))
        except Exception as exc:  # a clean exception, but not one of the op contract's
            unexpected.append(f"fastadv::{name}: {type(exc).__name__}: {exc}")
            result = ("unexpected", str(exc))
        counts[name]["calls"] += 1
        counts[name]["ok" if result is None else "raised"] += 1
        if kernel is None:
            continue
        if python_rule != result:
            mismatches.append(f"{CALL}{i} fastadv::{name}: C++ {result} but "
                              f"_kernel_checks {python_rule}")
        if triton_here and (python_rule is not None or launches_left > 0):
            # The Triton launcher, as the op layer calls it: the same verdict, no crash.
            launched = python_rule is None
            if launched:
                launches_left -= 1
            os.environ["FASTADV_BACKEND"] = "triton"  # a failing launch raises, unrecorded
            launch = ops._kernel("triton", kernel)
            got = outcome(lambda: launch(*copies))
            triton_counts["checked"] += 1
            triton_counts["launched"] += launched
            if got != python_rule and not (launched and got is not None):
                mismatches.append(f"{CALL}{i} triton {kernel}: {got} but the rule says "
                                  f"{python_rule}")
    summary = {"calls": calls, "crashes": 0, "seconds": round(time.perf_counter() - start, 2),
               "ops": counts, "triton": triton_counts, "unexpected": unexpected,
               "mismatches": mismatches}
    print(SUMMARY + json.dumps(summary), flush=True)


# --------------------------------------------------------------------------- the tests


def _run_driver(seed: int, calls: int, timeout: float = 600):
    env = dict(os.environ)
    env.pop("FASTADV_BACKEND", None)
    env.setdefault("TRITON_INTERPRET", "1")  # CPU tensors only: Triton runs interpreted
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run([sys.executable, os.path.abspath(__file__), "--seed", str(seed),
                           "--calls", str(calls)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=os.path.dirname(os.path.dirname(here)))


def test_raw_op_fuzz():
    import pytest
    import torch

    from fastadv import backends

    if not backends.has_extension():
        pytest.skip("fastadv._C is not built")
    start = time.perf_counter()
    proc = _run_driver(SEED, CALLS)
    wall = time.perf_counter() - start
    lines = proc.stdout.splitlines()
    summary = [json.loads(line[len(SUMMARY):]) for line in lines if line.startswith(SUMMARY)]
    if proc.returncode != 0 or not summary:
        made = [line for line in lines if line.startswith(CALL)]
        last = made[-1] if made else "(before the first call)"
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        pytest.fail(f"raw-op fuzz: the process crashed ({how}) after {len(made)} calls; the "
                    f"offending call:\n{last}\nstderr:\n{proc.stderr[-3000:]}")
    s = summary[0]
    message = (f"raw-op fuzz: {s['calls']} calls, {s['crashes']} crashes, "
               f"{len(s['unexpected'])} unexpected exception types, {len(s['mismatches'])} "
               f"C++/Python rule mismatches, Triton launcher {s['triton']}, "
               f"{s['seconds']} s of calls, {wall:.1f} s in all")
    print(message)
    assert s["calls"] >= FLOOR, message
    assert not s["unexpected"], message + "\n" + "\n".join(s["unexpected"][:20])
    assert not s["mismatches"], message + "\n" + "\n".join(s["mismatches"][:20])
    names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastadv::")}
    assert {f"fastadv::{n}" for n in s["ops"]} == names, message
    for name, c in s["ops"].items():
        assert c["calls"] >= 20 or name == "_pgd_triton_", f"{name}: {c}; {message}"
        if name.endswith("_kernel_"):  # both sides of the checks reached
            assert c["ok"] >= 10 and c["raised"] >= 10, f"{name}: {c}; {message}"


# The calls that crashed or failed obscurely before the integer checks, each in a fresh
# process (a regression would kill it with SIGFPE, not pytest).
REGRESSION = r"""
import torch, fastadv._C
x = torch.rand(2, 4, 3, 5)
for channels, channel_div in [(4, 2**62), (2, 2**62), (3, 2**62), (3, 15), (5, 15)]:
    try:
        torch.ops.fastadv._linf_step_kernel_(x, torch.randn_like(x), x.clone(), None, 0.1, None,
                                             0.01, torch.zeros(channels), 0.0, None, 1.0, 60,
                                             channel_div)
        print("accepted", channels, channel_div)
    except ValueError as exc:
        print(exc)
"""


def test_channel_div_overflow_is_a_clear_error_not_a_signal():
    import pytest

    from fastadv import backends

    if not backends.has_extension():
        pytest.skip("fastadv._C is not built")
    proc = subprocess.run([sys.executable, "-c", REGRESSION], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    op = "fastadv::_linf_step_kernel_: "
    assert lines == [
        op + "channel_div (4611686018427387904) * channels (4, the length of lower) must divide "
             "example_size (60)",
        op + "channel_div (4611686018427387904) * channels (2, the length of lower) must divide "
             "example_size (60)",
        op + "channel_div (4611686018427387904) * channels (3, the length of lower) must divide "
             "example_size (60)",
        op + "channel_div (15) * channels (3, the length of lower) must divide example_size (60)",
        op + "channel_div (15) * channels (5, the length of lower) must divide example_size (60)",
    ], proc.stdout


def _main() -> None:
    parser = argparse.ArgumentParser(description="The raw-op fuzz driver (run by the test).")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--calls", type=int, default=CALLS)
    options = parser.parse_args()
    _driver(options.seed, options.calls)


if __name__ == "__main__":
    _main()
