"""The raw kernel ops (torch.ops.fastadv._*_kernel_) check their arguments before reading
anything: the public ops validate first, but a direct call with a CPU seed for a CUDA x, a
table shorter than the batch or a grad in another layout would read out of bounds or on the
wrong device. Each error names the op and the argument and leaves x unchanged.

The CPU and CUDA entry points call the same checks (csrc/checks.h). Without a GPU, the device
checks are reached by forcing the CPU kernel with a 'meta' tensor among the arguments (the
dispatcher would otherwise route any meta argument to the missing Meta kernel)."""

import pytest
import torch

from conftest import BACKEND_CASES

pytestmark = pytest.mark.skipif(not any(b == "cpp" for _, b in BACKEND_CASES),
                                reason="fastadv._C is not built")

OPS = torch.ops.fastadv
CPU_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def step_args(**change):
    """Valid _linf/_l2_step_kernel_ arguments for x [2, 3, 4, 5], with some replaced."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, generator=gen)
    args = dict(x=x, grad=torch.randn(2, 3, 4, 5, generator=gen), x_nat=x.clone(),
                eps=torch.full((2,), 0.1), eps_value=0.0, alpha=None, alpha_value=0.01,
                lower=torch.zeros(3), lower_value=0.0, upper=None, upper_value=1.0,
                example_size=60, channel_div=20)
    args.update(change)
    return args


def random_init_args(**change):
    x = torch.rand(2, 3, 4, 5)
    args = dict(x=x, x_nat=x.clone(), seed=torch.tensor([7]), eps=None, eps_value=0.1,
                lower=None, lower_value=0.0, upper=torch.ones(3), upper_value=1.0,
                example_size=60, channel_div=20)
    args.update(change)
    return args


def keep_best_args(**change):
    args = dict(best_x=torch.zeros(4, 6), best_loss=torch.zeros(4), x=torch.ones(4, 6),
                loss=torch.ones(4), example_size=6)
    args.update(change)
    return args


def assert_refused(op, args, error, *words, written="x"):
    before = args[written].clone()
    with pytest.raises(error) as info:
        op(*args.values())
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert torch.equal(args[written], before), "x was written before the check"


@pytest.mark.parametrize("kernel", ["_linf_step_kernel_", "_l2_step_kernel_"])
@pytest.mark.parametrize("change, error, words", [
    (dict(eps=torch.full((1,), 0.1)), ValueError, ["eps", "one value per example (2)"]),
    (dict(alpha=torch.full((3,), 0.1)), ValueError, ["alpha", "(2), got 3"]),
    (dict(eps=torch.full((2,), 0.1, dtype=torch.float64)), TypeError, ["eps", "float32"]),
    (dict(eps=torch.full((4,), 0.1)[::2]), ValueError, ["eps", "contiguous"]),
    (dict(lower=torch.zeros(3), upper=torch.ones(2)), ValueError, ["lower has 3", "upper has 2"]),
    (dict(lower=torch.zeros(0)), ValueError, ["lower", "per channel"]),
    (dict(x_nat=torch.rand(2, 3, 4, 5).half()), TypeError, ["x_nat", "dtype"]),
    (dict(grad=torch.randn(2, 3, 4, 4)), ValueError, ["grad", "shape"]),
    (dict(grad=torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)),
     ValueError, ["grad", "strides"]),
    (dict(grad=torch.randn(2, 3, 4, 5).long()), TypeError, ["grad", "float32"]),
    (dict(example_size=7), ValueError, ["example_size", "120"]),
    (dict(channel_div=0), ValueError, ["channel_div"]),
])
def test_step_kernels_refuse_bad_arguments(kernel, change, error, words):
    assert_refused(getattr(OPS, kernel), step_args(**change), error, f"fastadv::{kernel}", *words)


# The integer arguments, checked before any arithmetic on them: channel_div = 2**62 with 4
# channels made the CPU walk's period channel_div * channels overflow to 0 (SIGFPE in its
# modulo; tests/ops/test_raw_op_fuzz.py runs that call in a subprocess), with 2 or 3 channels
# a negative table size (std::length_error). Each case: the change, then words of the error.
INTEGER_CASES = [
    (dict(channel_div=2**62, lower=torch.zeros(4), upper=None, x=torch.rand(2, 4, 3, 5),
          grad=torch.randn(2, 4, 3, 5), x_nat=torch.rand(2, 4, 3, 5)),
     ["channel_div (4611686018427387904) * channels (4, the length of lower) must divide "
      "example_size (60)"]),
    (dict(channel_div=2**62, lower=torch.zeros(2)), ["channels (2, the length of lower)"]),
    (dict(channel_div=2**62), ["channels (3, the length of lower)"]),
    (dict(channel_div=2**62, lower=None, upper=torch.ones(3)),
     ["channels (3, the length of upper)"]),
    (dict(channel_div=2**62, lower=None), ["channel_div (4611686018427387904) must divide "
                                           "example_size (60)"]),
    (dict(channel_div=2**63 - 1), ["channel_div (9223372036854775807)"]),
    (dict(channel_div=-2**63), ["channel_div must be >= 1, got -9223372036854775808"]),
    (dict(channel_div=-1), ["channel_div must be >= 1, got -1"]),
    # Tables of another length than x's channels: x has 3 (channel_div 20, example_size 60).
    (dict(lower=torch.zeros(2)), ["channel_div (20) * channels (2, the length of lower) must "
                                  "divide example_size (60)"]),
    (dict(lower=torch.zeros(2), upper=torch.ones(2)), ["channels (2, the length of lower)"]),
    (dict(lower=None, upper=torch.ones(4)), ["channels (4, the length of upper)"]),
    # ... and x has 4 (channel_div 15, example_size 60): a 3-entry table.
    (dict(x=torch.rand(2, 4, 3, 5), grad=torch.randn(2, 4, 3, 5), x_nat=torch.rand(2, 4, 3, 5),
          channel_div=15, lower=torch.zeros(3)), ["channels (3, the length of lower)"]),
    (dict(channel_div=7), ["channel_div (7) * channels (3, the length of lower)"]),
    (dict(example_size=0), ["example_size must be >= 1, got 0"]),
    (dict(example_size=-1), ["example_size must be >= 1, got -1"]),
    (dict(example_size=-2**63), ["example_size must be >= 1, got -9223372036854775808"]),
    (dict(example_size=2**31), ["example_size must divide x's 120 elements, got 2147483648"]),
    (dict(example_size=2**63 - 1), ["example_size must divide x's 120 elements"]),
    (dict(example_size=120, channel_div=2**62, eps=None),
     ["channel_div (4611686018427387904) * channels (3, the length of lower) must divide "
      "example_size (120)"]),
]


@pytest.mark.parametrize("kernel", ["_linf_step_kernel_", "_l2_step_kernel_"])
@pytest.mark.parametrize("change, words", INTEGER_CASES)
def test_step_kernels_refuse_integers_out_of_range(kernel, change, words):
    assert_refused(getattr(OPS, kernel), step_args(**change), ValueError, f"fastadv::{kernel}",
                   *words)


@pytest.mark.parametrize("change, words", [
    (dict(channel_div=2**62, upper=torch.ones(4), x=torch.rand(2, 4, 3, 5),
          x_nat=torch.rand(2, 4, 3, 5)), ["channels (4, the length of upper)"]),
    (dict(channel_div=2**62, upper=torch.ones(2)), ["channels (2, the length of upper)"]),
    (dict(upper=torch.ones(2)), ["channel_div (20) * channels (2, the length of upper)"]),
    (dict(channel_div=0), ["channel_div must be >= 1, got 0"]),
    (dict(example_size=-2**63), ["example_size must be >= 1"]),
    (dict(example_size=2**62), ["example_size must divide x's 120 elements"]),
])
def test_random_init_kernel_refuses_integers_out_of_range(change, words):
    assert_refused(OPS._random_init_kernel_, random_init_args(**change), ValueError,
                   "fastadv::_random_init_kernel_", *words)


@pytest.mark.parametrize("example_size, words", [
    (0, "example_size must be >= 1, got 0"), (-1, "example_size must be >= 1, got -1"),
    (-2**63, "example_size must be >= 1"), (2**63 - 1, "example_size must divide x's 24"),
    (48, "example_size must divide x's 24 elements, got 48"),
])
def test_keep_best_kernel_refuses_integers_out_of_range(example_size, words):
    assert_refused(OPS._keep_best_kernel_, keep_best_args(example_size=example_size), ValueError,
                   "fastadv::_keep_best_kernel_", words, written="best_x")


def test_empty_x_still_needs_positive_integers():
    x = torch.empty(2, 0, 4)
    for example_size, channel_div, word in [(0, 1, "example_size"), (1, -2**63, "channel_div")]:
        with pytest.raises(ValueError, match=f"{word} must be >= 1"):
            OPS._linf_step_kernel_(x, x.clone(), x.clone(), None, 0.1, None, 0.1, None, 0.0,
                                   None, 1.0, example_size, channel_div)


@pytest.mark.parametrize("change, words", INTEGER_CASES[:6] + INTEGER_CASES[8:])
def test_triton_launcher_checks_are_the_cpp_checks(change, words):
    """The op layer checks the Triton launchers' arguments with fastadv/_kernel_checks.py:
    the rules of csrc/checks.h, with the same error (the fuzz compares them at random)."""
    from fastadv import _kernel_checks

    args = list(step_args(**change).values())
    with pytest.raises(ValueError) as cpp:
        OPS._linf_step_kernel_(*args)
    with pytest.raises(ValueError) as python:
        _kernel_checks.launcher_args("linf_step", args[0], tuple(args[1:]))
    assert str(python.value) == str(cpp.value)


def test_step_kernel_refuses_a_strided_x():
    x = torch.rand(2, 3, 4, 10)[..., ::2]
    args = step_args(x=x, grad=torch.randn(2, 3, 4, 10)[..., ::2], x_nat=x.clone())
    assert_refused(OPS._linf_step_kernel_, args, ValueError, "x must be dense")


def test_strides_of_size_one_dimensions_do_not_matter():
    """The op layer passes tensors whose strides differ only where the size is 1."""
    x = torch.rand(2, 1, 4, 5)
    x_nat = x.clone().as_strided(x.shape, (20, 1, 5, 1))
    args = step_args(x=x, grad=torch.randn(2, 1, 4, 5), x_nat=x_nat, lower=None, channel_div=20,
                     example_size=20)
    OPS._linf_step_kernel_(*args.values())


@pytest.mark.parametrize("change, error, words", [
    (dict(seed=torch.tensor([7], dtype=torch.int32)), TypeError, ["seed", "int64"]),
    (dict(seed=torch.tensor([7.0])), TypeError, ["seed", "int64"]),
    (dict(seed=torch.zeros(0, dtype=torch.int64)), ValueError, ["seed", "empty"]),
    (dict(eps=torch.full((3,), 0.1)), ValueError, ["eps", "(2), got 3"]),
    (dict(x_nat=torch.rand(2, 3, 4, 5).bfloat16()), TypeError, ["x_nat", "dtype"]),
    (dict(upper=torch.ones(3, dtype=torch.float16)), TypeError, ["upper", "float32"]),
])
def test_random_init_kernel_refuses_bad_arguments(change, error, words):
    assert_refused(OPS._random_init_kernel_, random_init_args(**change), error,
                   "fastadv::_random_init_kernel_", *words)


@pytest.mark.parametrize("change, error, words", [
    (dict(loss=torch.ones(3)), ValueError, ["loss", "(4), got 3"]),
    (dict(loss=torch.ones(4, dtype=torch.float16)), TypeError, ["loss", "best_loss's dtype"]),
    (dict(best_loss=torch.zeros(8)[::2]), ValueError, ["best_loss", "contiguous"]),
    (dict(x=torch.ones(4, 6).half()), TypeError, ["x must have best_x's dtype"]),
    (dict(example_size=5), ValueError, ["example_size"]),
])
def test_keep_best_kernel_refuses_bad_arguments(change, error, words):
    assert_refused(OPS._keep_best_kernel_, keep_best_args(**change), error,
                   "fastadv::_keep_best_kernel_", *words, written="best_x")


# Tensors on another device: 'meta' stands in for CUDA (the check compares devices only).
@pytest.mark.parametrize("name", ["seed", "x_nat", "upper"])
def test_random_init_kernel_refuses_another_device(name):
    args = random_init_args()
    args[name] = args[name].to("meta")
    op = OPS._random_init_kernel_.default
    before = args["x"].clone()
    with pytest.raises(ValueError, match=f"{name} is on meta but x is on cpu"):
        op.redispatch(CPU_ONLY, *args.values())
    assert torch.equal(args["x"], before)


@pytest.mark.parametrize("kernel", ["_linf_step_kernel_", "_l2_step_kernel_"])
@pytest.mark.parametrize("name", ["grad", "x_nat", "eps", "lower"])
def test_step_kernels_refuse_another_device(kernel, name):
    args = step_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but x is on cpu"):
        getattr(OPS, kernel).default.redispatch(CPU_ONLY, *args.values())


@pytest.mark.parametrize("name", ["x", "best_loss", "loss"])
def test_keep_best_kernel_refuses_another_device(name):
    args = keep_best_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but best_x is on cpu"):
        OPS._keep_best_kernel_.default.redispatch(CPU_ONLY, *args.values())


def test_keep_best_with_empty_examples_updates_the_losses():
    """[B, 0] examples: nothing to copy, but the losses still update as in the reference
    (the CPU kernel copied example_size elements from the empty tensors: a segfault)."""
    best_x, x = torch.empty(3, 0), torch.empty(3, 0)
    best_loss, loss = torch.zeros(3), torch.tensor([1.0, -1.0, 2.0])
    OPS._keep_best_kernel_(best_x, best_loss, x, loss, 1)
    assert torch.equal(best_loss, torch.tensor([1.0, 0.0, 2.0]))


def test_empty_x_skips_the_size_checks():
    """An empty batch reads nothing: tables sized for the batch of the op layer pass."""
    x = torch.empty(2, 0, 4)
    OPS._linf_step_kernel_(x, x.clone(), x.clone(), torch.full((2,), 0.1), 0.0, None, 0.1,
                           None, 0.0, None, 1.0, 1, 1)


# --------------------------------------------------------------------------- the op layer
# The registered ops check devices before any backend runs (a Triton kernel handed a CPU
# seed for a CUDA x would read host memory, and its failure would wrongly switch Triton off).
# A meta tensor stands in for "another device" here; the Python impls are called directly,
# since the dispatcher sends meta tensors to the fake implementations.


def test_random_init_op_refuses_seed_on_another_device():
    from fastadv import ops

    x = torch.rand(2, 3, 4, 4)
    before = x.clone()
    with pytest.raises(ValueError, match="random_init_: seed is on meta"):
        ops._random_init_op(x, x.clone(), torch.zeros(1, dtype=torch.int64, device="meta"),
                            None, 0.1, None, 0.0, None, 1.0)
    assert torch.equal(x, before)


@pytest.mark.parametrize("which", ["grad", "x_nat", "eps_t"])
def test_pgd_op_refuses_tensors_on_another_device(which):
    from fastadv import ops

    x = torch.rand(2, 3, 4, 4)
    before = x.clone()
    args = {"grad": torch.randn_like(x), "x_nat": x.clone(),
            "eps_t": torch.full((2,), 0.1)}
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=f"pgd_: {which} is on meta"):
        ops._pgd_op(x, args["grad"], args["x_nat"], args["eps_t"], 0.0, None, 0.01,
                    None, 0.0, None, 1.0, "linf")
    assert torch.equal(x, before)


@pytest.mark.parametrize("stride", [0, 3, 2**40])
def test_op_layer_channel_div_for_a_one_element_channel_dim(stride):
    """x [B, 1, ...] is contiguous whatever the stride of dim 1: the op layer passes
    channel_div 1 there (it passed the stride, 0 refused by the kernel, 2**40 beyond
    example_size)."""
    import fastadv
    from fastadv import reference

    base = torch.rand(2, 1, 3)
    x = base.clone().as_strided((2, 1, 3), (3, stride, 1))
    assert x.is_contiguous()
    grad, x_nat = torch.randn(2, 1, 3), torch.rand(2, 1, 3)
    lower = torch.tensor([0.1]).view(1, 1)
    expected = reference.linf_step(base, grad, x_nat, 0.2, 0.05, lower, 1.0)
    fastadv.pgd_(x, grad, x_nat, eps=0.2, alpha=0.05, lower=lower)
    assert torch.equal(x, expected)


@pytest.mark.skipif(not any(b == "triton" for _, b in BACKEND_CASES),
                    reason="Triton cannot run here")
def test_registered_op_on_triton_checks_like_the_kernel_ops(monkeypatch):
    """torch.ops.fastadv.pgd_ called directly (no public checks) with a short grad: the
    Triton launcher is checked as _linf_step_kernel_ is, instead of reading out of bounds."""
    monkeypatch.setenv("FASTADV_BACKEND", "triton")
    x = torch.rand(4, 3, 5, 5)
    before = x.clone()
    with pytest.raises(ValueError, match="grad has shape"):
        torch.ops.fastadv.pgd_(x, torch.randn(2), x.clone(), None, 0.1, None, 0.01, None, 0.0,
                               None, 1.0, "linf")
    with pytest.raises(ValueError, match="eps must have one value per example"):
        torch.ops.fastadv.pgd_(x, torch.randn_like(x), x.clone(), torch.ones(1), 0.0, None, 0.01,
                               None, 0.0, None, 1.0, "linf")
    assert torch.equal(x, before)


def test_registered_step_op_refuses_another_norm():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2', got 'Linf'"):
        torch.ops.fastadv.pgd_(x, torch.randn_like(x), x.clone(), None, 0.1, None, 0.01, None,
                               0.0, None, 1.0, "Linf")


def test_keep_best_op_refuses_loss_on_another_device():
    from fastadv import ops

    best_x, x = torch.zeros(2, 5), torch.ones(2, 5)
    best_loss = torch.zeros(2)
    with pytest.raises(ValueError, match="keep_best_: loss is on meta"):
        ops._keep_best_op(best_x, best_loss, x, torch.ones(2, device="meta"))
    assert not best_x.any() and not best_loss.any()


x4 = torch.rand(2, 3, 4, 5)
KIND_CASES = [  # (changes to step_args incl. kinds and order, error, words)
    (dict(kinds=[1, 0, 2]), ValueError, ["kinds must hold 4 values"]),
    (dict(kinds=[1, 0, 2, 7]), ValueError, ["the kind of upper must be 0 to 4, got 7"]),
    (dict(kinds=[1, 1, 2, 0]), ValueError, ["alpha has a tensor kind but no tensor"]),
    (dict(kinds=[0, 0, 2, 0]), ValueError, ["eps is a tensor but its kind is 0"]),
    (dict(eps=torch.full((3,), 0.1), kinds=[3, 0, 2, 0]), ValueError,
     ["eps must have one value per example and channel (2 examples), got 3"]),
    (dict(kinds=[3, 0, 2, 0]), ValueError, ["lower has 3 channels but eps has 1"]),
    (dict(eps=torch.full((8,), 0.1), kinds=[3, 0, 2, 0]), ValueError,
     ["lower has 3 channels but eps has 4"]),
    (dict(eps=torch.full((6,), 0.1), kinds=[3, 0, 2, 0], channel_div=7), ValueError,
     ["channel_div (7) * channels (3", "must divide example_size (60)"]),
    (dict(lower=torch.zeros(2, 3, 4, 5).transpose(2, 3).contiguous().transpose(2, 3)[..., :5],
          kinds=[1, 0, 4, 0]), ValueError, ["lower has strides"]),
    (dict(lower=torch.zeros(2, 3, 4, 5, dtype=torch.float16), kinds=[1, 0, 4, 0]), TypeError,
     ["lower must be float32"]),
    (dict(lower=torch.zeros(2, 3, 4, 4), kinds=[1, 0, 4, 0]), ValueError, ["lower has shape"]),
    (dict(kinds=[1, 0, 2, 0], order=4), ValueError, ["order must be 0, 1, 2 or 3, got 4"]),
    (dict(order=-1), ValueError, ["order must be 0, 1, 2 or 3, got -1"]),
]


@pytest.mark.parametrize("change, error, words", KIND_CASES)
def test_kinds_and_order_checked_alike_in_cpp_and_python(change, error, words):
    """The kernel ops' `kinds` and `order` (csrc/checks.h `kinded`): each table sized for its
    kind, the channel counts agreeing, an element table laid out like x; the C++ op and the
    Triton launchers' checks raise the same error, x unchanged."""
    from fastadv import _kernel_checks

    args = step_args(**{"kinds": [], "order": 0, **change})
    assert_refused(OPS._linf_step_kernel_, args, error, *words)
    values = list(args.values())
    with pytest.raises(error) as python:
        _kernel_checks.launcher_args("linf_step", values[0], tuple(values[1:]))
    with pytest.raises(error) as cpp:
        OPS._linf_step_kernel_(*values)
    assert str(python.value) == str(cpp.value)


@pytest.mark.parametrize("shape, memory_format", [
    ((2, 3, 4, 5), torch.contiguous_format),  # channel runs of 20: the CPU's table walk
    ((2, 3, 16, 17), torch.contiguous_format),  # runs of 272: the CPU's channel segments
    ((2, 3, 16, 17), torch.channels_last),  # runs of 1: the repeated channel pattern
    ((2, 3, 70, 70), torch.contiguous_format),  # a period beyond the CPU's pattern tables
])
@pytest.mark.parametrize("kinds", [[3, 2, 4, 1], [3, 2, 2, 0], [2, 1, 0, 2], [1, 3, 0, 0],
                                   [1, 0, 2, 2], [0, 1, 0, 0]])
def test_every_kind_accepted_and_computed(shape, memory_format, kinds):
    """Valid tables of every kind, on the CPU kernel's every walk: the reference's numbers,
    for the step in each order and the random start."""
    from fastadv import reference
    from fastadv._layout import flat_layout

    gen = torch.Generator().manual_seed(1)
    batch, channels = shape[:2]
    x_nat = torch.rand(shape, generator=gen).contiguous(memory_format=memory_format)
    x = (x_nat + 0.05 * torch.randn(shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen).contiguous(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    forms = {1: (batch, 1, 1, 1), 2: (1, channels, 1, 1), 3: (batch, channels, 1, 1),
             4: shape}

    def table(kind, scale, offset=0.0):
        if kind == 0:
            return None, offset + scale / 2, offset + scale / 2
        full = offset + torch.rand(forms[kind], generator=gen) * scale
        kernel = (full.expand(shape).contiguous(memory_format=memory_format) if kind == 4
                  else full.reshape(-1).contiguous())
        return kernel, 0.0, full

    (e_t, e, e_ref), (a_t, a, a_ref) = table(kinds[0], 0.1), table(kinds[1], 0.02)
    (lo_t, lo, lo_ref), (hi_t, hi, hi_ref) = table(kinds[2], 0.2), table(kinds[3], 0.1, 0.9)
    example_size, channel_div = flat_layout(x)
    for order in range(4):
        out = x.clone()
        OPS._linf_step_kernel_(out, grad, x_nat, e_t, e, a_t, a, lo_t, lo, hi_t, hi,
                               example_size, channel_div, kinds, order)
        want = reference.linf_step(x, grad, x_nat, e_ref, a_ref, lo_ref, hi_ref, order)
        assert torch.equal(out, want), order
        seed = torch.tensor([99])
        OPS._random_init_kernel_(out, x_nat, seed, e_t, e, lo_t, lo, hi_t, hi, example_size,
                                 channel_div, [kinds[0], kinds[2], kinds[3]], order)
        want = reference.random_init(x, x_nat, seed, e_ref, lo_ref, hi_ref, order)
        assert torch.equal(out, want), f"random start, order {order}"
