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


@pytest.mark.parametrize("which", ["grad", "x_nat", "eps_per_example"])
def test_pgd_op_refuses_tensors_on_another_device(which):
    from fastadv import ops

    x = torch.rand(2, 3, 4, 4)
    before = x.clone()
    args = {"grad": torch.randn_like(x), "x_nat": x.clone(), "eps_per_example": torch.full((2,), 0.1)}
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=f"pgd_: {which} is on meta"):
        ops._pgd_op(x, args["grad"], args["x_nat"], args["eps_per_example"], 0.0, None, 0.01,
                    None, 0.0, None, 1.0, "linf")
    assert torch.equal(x, before)


def test_keep_best_op_refuses_loss_on_another_device():
    from fastadv import ops

    best_x, x = torch.zeros(2, 5), torch.ones(2, 5)
    best_loss = torch.zeros(2)
    with pytest.raises(ValueError, match="keep_best_: loss is on meta"):
        ops._keep_best_op(best_x, best_loss, x, torch.ones(2, device="meta"))
    assert not best_x.any() and not best_loss.any()
