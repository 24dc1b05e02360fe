"""Bad input raises a clear error naming the argument, before anything is written."""

import pytest
import torch

import fastadv

B = 3


def state():
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(B, 3, 4, 4, generator=gen)
    return x_nat.clone(), torch.randn(B, 3, 4, 4, generator=gen), x_nat


GOOD = dict(eps=0.03, alpha=0.01)

PGD_CASES = [
    # (description, change to (x_adv, grad, x_nat, kwargs), error, words in the message)
    ("negative eps", lambda x, g, n, kw: (x, g, n, {**kw, "eps": -0.1}), ValueError, ["eps", ">= 0"]),
    ("NaN eps", lambda x, g, n, kw: (x, g, n, {**kw, "eps": float("nan")}), ValueError, ["eps", "NaN"]),
    ("negative eps per example",
     lambda x, g, n, kw: (x, g, n, {**kw, "eps": torch.tensor([0.1, -0.1, 0.1])}), ValueError, ["eps", ">= 0"]),
    ("eps of the wrong length",
     lambda x, g, n, kw: (x, g, n, {**kw, "eps": torch.tensor([0.1, 0.1])}), ValueError, ["eps", "[B] = [3]"]),
    ("eps of the wrong rank",
     lambda x, g, n, kw: (x, g, n, {**kw, "eps": torch.full((B, 1), 0.1)}), ValueError, ["eps", "shape"]),
    ("integer eps tensor",
     lambda x, g, n, kw: (x, g, n, {**kw, "eps": torch.tensor([1, 1, 1])}), TypeError, ["eps", "floating"]),
    ("string eps", lambda x, g, n, kw: (x, g, n, {**kw, "eps": "8/255"}), TypeError, ["eps"]),
    ("bool alpha", lambda x, g, n, kw: (x, g, n, {**kw, "alpha": True}), TypeError, ["alpha"]),
    ("bool eps", lambda x, g, n, kw: (x, g, n, {**kw, "eps": True}), TypeError, ["eps"]),
    ("infinite alpha", lambda x, g, n, kw: (x, g, n, {**kw, "alpha": float("inf")}), ValueError, ["alpha", "finite"]),
    ("NaN alpha", lambda x, g, n, kw: (x, g, n, {**kw, "alpha": float("nan")}), ValueError, ["alpha", "NaN"]),
    ("alpha beyond a float", lambda x, g, n, kw: (x, g, n, {**kw, "alpha": 10**400}), ValueError,
     ["alpha", "finite"]),
    ("grad shape", lambda x, g, n, kw: (x, g[:, :2], n, kw), ValueError, ["grad", "shape"]),
    ("x_nat shape", lambda x, g, n, kw: (x, g, n[:2], kw), ValueError, ["x_nat", "shape"]),
    ("integer x_adv", lambda x, g, n, kw: (x.to(torch.int32), g, n, kw), TypeError, ["x_adv", "floating"]),
    ("integer grad", lambda x, g, n, kw: (x, g.to(torch.int64), n, kw), TypeError, ["grad", "floating"]),
    ("x_nat dtype", lambda x, g, n, kw: (x, g, n.half(), kw), TypeError, ["x_nat", "dtype"]),
    ("x_nat on another device", lambda x, g, n, kw: (x, g, n.to("meta"), kw), ValueError, ["x_nat", "meta"]),
    ("grad not a tensor", lambda x, g, n, kw: (x, g.numpy(), n, kw), TypeError, ["grad", "torch.Tensor"]),
    ("0-dim x_adv", lambda x, g, n, kw: (x[0, 0, 0, 0], g[0, 0, 0, 0], n[0, 0, 0, 0], kw), ValueError,
     ["x_adv", "batch"]),
    ("unknown norm", lambda x, g, n, kw: (x, g, n, {**kw, "norm": "l1"}), ValueError, ["norm", "'l1'"]),
    ("norm None", lambda x, g, n, kw: (x, g, n, {**kw, "norm": None}), ValueError, ["norm", "None"]),
    ("lower above upper", lambda x, g, n, kw: (x, g, n, {**kw, "lower": 0.8, "upper": 0.2}), ValueError,
     ["lower", "upper"]),
    ("lower above upper per channel",
     lambda x, g, n, kw: (x, g, n, {**kw, "lower": torch.tensor([0.0, 0.9, 0.0]).view(3, 1, 1),
                                    "upper": 0.5}), ValueError, ["lower", "upper"]),
    ("bound that does not broadcast to x",
     lambda x, g, n, kw: (x, g, n, {**kw, "lower": torch.zeros(5)}), ValueError, ["lower", "broadcasts", "[3, 1, 1]"]),
    ("bound with more dims than x",
     lambda x, g, n, kw: (x, g, n, {**kw, "upper": torch.ones(1, 1, 3, 1, 1)}), ValueError, ["upper", "broadcasts"]),
    ("NaN upper", lambda x, g, n, kw: (x, g, n, {**kw, "upper": float("nan")}), ValueError, ["upper", "NaN"]),
    ("NaN lower", lambda x, g, n, kw: (x, g, n, {**kw, "lower": float("nan")}), ValueError, ["lower", "NaN"]),
]


@pytest.mark.parametrize("functional", [False, True], ids=["pgd_", "pgd_step"])
@pytest.mark.parametrize("case", PGD_CASES, ids=[c[0] for c in PGD_CASES])
def test_pgd_rejects_and_leaves_x_adv_unchanged(device_backend, case, functional):
    _, change, error, words = case
    x_adv, grad, x_nat = state()
    x_adv, grad, x_nat, kwargs = change(x_adv, grad, x_nat, dict(GOOD))
    before = x_adv.clone()
    op = fastadv.pgd_step if functional else fastadv.pgd_
    with pytest.raises(error) as info:
        op(x_adv, grad, x_nat, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
    assert torch.equal(x_adv, before)


@pytest.mark.parametrize("functional", [False, True], ids=["pgd_", "pgd_step"])
def test_pgd_rejects_an_x_adv_that_is_not_a_tensor(functional):
    _, grad, x_nat = state()
    op = fastadv.pgd_step if functional else fastadv.pgd_
    with pytest.raises(TypeError, match="x_adv must be a torch.Tensor, got list"):
        op([0.5], grad, x_nat, **GOOD)


def test_random_init_rejects(device_backend):
    x_adv, _, x_nat = state()
    before = x_adv.clone()
    with pytest.raises(ValueError, match="eps"):
        fastadv.random_init_(x_adv, x_nat, eps=-1.0)
    with pytest.raises(ValueError, match="x_nat"):
        fastadv.random_init_(x_adv, x_nat[:, :1], eps=0.1)
    with pytest.raises(TypeError, match="generator"):
        fastadv.random_init_(x_adv, x_nat, eps=0.1, generator=0)
    with pytest.raises(ValueError, match="eps.*finite"):
        fastadv.random_init_(x_adv, x_nat, eps=float("inf"))
    assert torch.equal(x_adv, before)


def test_keep_best_rejects(device_backend):
    best_x, _, x = state()
    best_loss = torch.zeros(B)
    before = best_x.clone(), best_loss.clone()
    with pytest.raises(ValueError, match=r"loss must have shape \[B\] = \[3\]"):
        fastadv.keep_best_(best_x, best_loss, x, torch.zeros(B, 1))
    with pytest.raises(ValueError, match="best_loss must have shape"):
        fastadv.keep_best_(best_x, torch.zeros(2), x, torch.zeros(B))
    with pytest.raises(TypeError, match="x must have the dtype of best_x"):
        fastadv.keep_best_(best_x, best_loss, x.half(), torch.zeros(B))
    with pytest.raises(TypeError, match="loss must be a floating-point"):
        fastadv.keep_best_(best_x, best_loss, x, torch.zeros(B, dtype=torch.long))
    assert torch.equal(best_x, before[0]) and torch.equal(best_loss, before[1])


def test_backend_env(monkeypatch):
    x_adv, grad, x_nat = state()
    monkeypatch.setenv("FASTADV_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTADV_BACKEND"):
        fastadv.pgd_(x_adv, grad, x_nat, **GOOD)
    monkeypatch.setenv("FASTADV_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="FASTADV_BACKEND=cuda cannot run on cpu"):
        fastadv.pgd_(x_adv, grad, x_nat, **GOOD)
