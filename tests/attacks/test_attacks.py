"""fastadv.pgd and friends on a real model (a CNN trained on the digits in a fixture)."""

import pytest
import torch
import torch.nn.functional as F

import fastadv
from digits_model import accuracy, train_digits_cnn

EPS, ALPHA, STEPS = 0.1, 0.025, 10
# 360 test images: one example is 0.28 pt; random starts differ between runs.
TOL = 0.015


@pytest.fixture(scope="module")
def digits():
    model, x, y = train_digits_cnn()
    assert accuracy(model, x, y) > 0.9
    return model, x, y


def reference_pgd(model, x, y, eps, alpha, steps, seed=0):
    """PGD as the paper writes it, in plain PyTorch (the test's own reference)."""
    gen = torch.Generator().manual_seed(seed)
    x_adv = (x + eps * (torch.rand(x.shape, generator=gen) * 2 - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps)
        x_adv = x_adv.clamp(0, 1)
    return x_adv


def robust(model, x, y, **kw):
    args = dict(eps=EPS, alpha=ALPHA, steps=STEPS)
    args.update(kw)
    return accuracy(model, fastadv.pgd(model, x, y, **args), y)


def test_as_strong_as_reference_pgd_and_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    ours = robust(model, x, y)
    ref = accuracy(model, reference_pgd(model, x, y, EPS, ALPHA, STEPS), y)
    ta = accuracy(model, torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS)(x, y), y)
    assert ours < accuracy(model, x, y) - 0.2  # the attack does something
    assert ours <= ref + TOL and ours <= ta + TOL, (ours, ref, ta)


def test_monotone_in_steps_restarts_and_eps(digits):
    model, x, y = digits
    torch.manual_seed(0)
    by_steps = [robust(model, x, y, steps=k) for k in (1, 5, 20)]
    by_restarts = [robust(model, x, y, restarts=r) for r in (1, 4)]
    by_eps = [robust(model, x, y, eps=e, alpha=e / 4) for e in (0.05, 0.1, 0.2)]
    for series in (by_steps, by_restarts, by_eps):
        assert all(b <= a + TOL for a, b in zip(series, series[1:])), series
    assert by_eps[0] > by_eps[-1] + 0.2


def test_zero_and_large_eps(digits):
    model, x, y = digits
    assert robust(model, x, y, eps=0.0, alpha=0.0) == accuracy(model, x, y)
    assert robust(model, x, y, eps=0.5, alpha=0.1, steps=20) <= 0.02


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariants(digits, precision, norm):
    model, x, y = digits
    eps = EPS if norm == "linf" else 1.0
    x_adv = fastadv.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=5, restarts=2, norm=norm,
                        precision=precision)
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    if norm == "linf":
        assert ((x_adv >= x - eps) & (x_adv <= x + eps)).all()  # exact in fp32
    else:
        assert ((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()


def test_input_gradients_only_and_modes_restored(digits):
    model, x, y = digits
    model.train()
    model.features.eval()  # a mixed-mode model must come back exactly as it was
    fastadv.pgd(model, x[:32], y[:32], eps=EPS, alpha=ALPHA, steps=3)
    assert model.training and not model.features.training and model.head.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    seen = []
    hook = model.head.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    fastadv.pgd(model, x[:8], y[:8], eps=EPS, alpha=ALPHA, steps=2, eval_mode=False)
    hook.remove()
    model.eval()
    assert seen and all(seen)  # eval_mode=False attacked in train mode


def test_no_weight_gradients_under_compile(digits):
    model, x, y = digits
    compiled = torch.compile(model)
    x_adv = fastadv.pgd(compiled, x[:16], y[:16], eps=EPS, alpha=ALPHA, steps=2)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    eager = fastadv.pgd(model, x[:16], y[:16], eps=EPS, alpha=ALPHA, steps=2, random_start=False)
    again = fastadv.pgd(compiled, x[:16], y[:16], eps=EPS, alpha=ALPHA, steps=2,
                        random_start=False)
    torch.testing.assert_close(again, eager, atol=1e-6, rtol=0)
    assert x_adv.shape == x[:16].shape


def test_batched_restarts_at_least_as_strong_as_sequential(digits):
    model, x, y = digits
    torch.manual_seed(1)
    batched = robust(model, x, y, restarts=4, max_batch=4 * len(y))  # all 4×B rows at once
    sequential_fooled = torch.zeros(len(y), dtype=torch.bool)
    for _ in range(4):
        x_adv = fastadv.pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=STEPS)
        with torch.no_grad():
            sequential_fooled |= model(x_adv).argmax(1) != y
    sequential = 1 - sequential_fooled.float().mean().item()
    assert batched <= sequential + TOL, (batched, sequential)


def test_cpu_default_batches_restarts_up_to_max_of_batch_and_64(digits):
    model, x, y = digits
    rows = []

    def recording(inp):
        rows.append(len(inp))
        return model(inp)

    for batch, restarts, most in ((8, 20, 64), (100, 3, 100)):
        rows.clear()
        fastadv.pgd(recording, x[:batch], y[:batch], eps=EPS, alpha=ALPHA, steps=2,
                    restarts=restarts)
        assert max(rows) == most and sum(rows) == 3 * batch * restarts, (batch, rows)


def test_early_stop_and_chunking_keep_the_strength(digits):
    model, x, y = digits
    torch.manual_seed(2)
    plain = robust(model, x, y, restarts=3)
    early = robust(model, x, y, restarts=3, early_stop=True)
    chunked = robust(model, x, y, restarts=3, max_batch=100)
    both = robust(model, x, y, restarts=3, max_batch=50, early_stop=True)
    assert max(early, chunked, both) <= plain + TOL, (plain, early, chunked, both)


def test_return_info(digits):
    model, x, y = digits
    x_adv, info = fastadv.pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=STEPS, restarts=3,
                              return_info=True)
    with torch.no_grad():
        logits = model(x_adv)
    assert torch.equal(info.fooled, logits.argmax(1) != y)
    torch.testing.assert_close(info.loss, F.cross_entropy(logits, y, reduction="none"))
    assert ((info.restart >= 0) & (info.restart < 3)).all()
    assert len(info.restart.unique()) > 1


def test_losses(digits):
    model, x, y = digits
    ce = robust(model, x, y)
    for loss in ("cw", "dlr"):
        assert robust(model, x, y, loss=loss) <= ce + 0.05


def test_targeted(digits):
    model, x, y = digits
    target = (y + 1) % 10
    x_adv = fastadv.pgd(model, x, target, eps=0.2, alpha=0.05, steps=20, targeted=True)
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean().item()
    assert hit > 0.5  # chance is 0.1
    x_cw = fastadv.pgd(model, x, target, eps=0.2, alpha=0.05, steps=20, targeted=True, loss="cw")
    with torch.no_grad():
        assert (model(x_cw).argmax(1) == target).float().mean().item() > 0.5


def test_fgsm_variants(digits):
    model, x, y = digits
    clean = accuracy(model, x, y)
    fgsm = accuracy(model, fastadv.fgsm(model, x, y, eps=EPS), y)
    fgsm_rs = fastadv.fgsm_rs(model, x, y, eps=EPS)
    assert fgsm < clean - 0.1
    assert ((fgsm_rs >= x - EPS) & (fgsm_rs <= x + EPS)).all()
    assert robust(model, x, y) <= fgsm + TOL  # iterative at least as strong as single-step


def test_class_api_and_normalisation(digits):
    model, x, y = digits
    atk = fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS)
    assert "eps=0.1" in repr(atk)
    assert accuracy(model, atk(x, y), y) <= robust(model, x, y) + TOL

    class ExpectsNormalised(torch.nn.Module):  # a model fed (x - 0.5) / 0.25
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z * 0.25 + 0.5)

    wrapped = ExpectsNormalised(model)
    atk = fastadv.PGD(wrapped, eps=EPS, alpha=ALPHA, steps=STEPS, mean=[0.5], std=[0.25])
    x_adv = atk(x, y)
    assert ((x_adv >= 0) & (x_adv <= 1) & (x_adv >= x - EPS) & (x_adv <= x + EPS)).all()
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2


def test_per_example_eps(digits):
    model, x, y = digits
    eps = torch.where(torch.arange(len(y)) % 2 == 0, 0.0, 0.2)
    x_adv = fastadv.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, restarts=2)
    assert torch.equal(x_adv[::2], x[::2])
    e = eps.view(-1, 1, 1, 1)
    assert ((x_adv >= x - e) & (x_adv <= x + e)).all()


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(y=torch.full((360,), 10)), ValueError, "labels y must lie in [0, 10)"),
    (dict(y=torch.zeros(5, dtype=torch.long)), ValueError, "y must have shape [B] = [360]"),
    (dict(y=torch.zeros(360)), TypeError, "y must be an integer tensor"),
    (dict(eps=torch.full((7,), 0.1)), ValueError, "eps must be a float, a tensor [B]"),
    (dict(eps=-0.1), ValueError, "eps must be >= 0"),
    (dict(steps=-1), ValueError, "steps must be an int >= 0"),
    (dict(restarts=0), ValueError, "restarts must be an int >= 1"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(loss="dlr", targeted=True), ValueError, "dlr' is untargeted"),
    (dict(precision="fp8"), ValueError, "precision must be one of"),
    (dict(cuda_graph=True), ValueError, "cuda_graph=True needs CUDA tensors"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input(digits, kwargs, error, words):
    model, x, y = digits
    args = dict(model=model, x=x, y=y, eps=EPS, alpha=ALPHA, steps=2)
    args.update(kwargs)
    with pytest.raises(error) as info:
        fastadv.pgd(args.pop("model"), args.pop("x"), args.pop("y"), **args)
    assert words in str(info.value)
    assert all(p.requires_grad for p in model.parameters())


def test_model_with_wrong_output_shape(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match=r"logits of shape \[B, num_classes\]"):
        fastadv.pgd(lambda t: model(t).sum(1), x, y, eps=EPS, alpha=ALPHA, steps=2)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("lower, upper", [
    (torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1), torch.tensor(0.8)),  # per channel + 0-dim
    (torch.tensor(0.25), torch.tensor([0.7, 0.8, 0.9]).view(1, 3, 1, 1)),
    (0.2, torch.tensor([0.7, 0.8, 0.9]).view(3, 1, 1)),
])
def test_tensor_bounds_per_channel_or_single_on_images(lower, upper):
    def as_channels(bound):  # [C, 1, 1] or [1, 1, 1]: broadcasts against [B, C, H, W]
        return torch.as_tensor(bound, dtype=torch.float32).reshape(-1, 1, 1)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10))
    x = 0.3 + 0.4 * torch.rand(5, 3, 8, 8)
    y = torch.randint(0, 10, (5,))
    eps = 0.1
    for restarts in (1, 2):
        x_adv = fastadv.pgd(model, x, y, eps=eps, alpha=0.03, steps=3, restarts=restarts,
                            lower=lower, upper=upper)
        lo = torch.maximum(as_channels(lower), x - eps)
        hi = torch.minimum(as_channels(upper), x + eps)
        assert ((x_adv >= lo) & (x_adv <= hi)).all()
        assert (x_adv != x).any()



def test_graphed_pgd_checks_its_settings_without_a_gpu(digits):
    model, _, _ = digits
    with pytest.raises(ValueError, match="max_graphs must be an int >= 0"):
        fastadv.GraphedPGD(model, eps=EPS, alpha=ALPHA, steps=2, max_graphs=-1)
    with pytest.raises(ValueError, match="capture_after must be an int >= 0"):
        fastadv.GraphedPGD(model, eps=EPS, alpha=ALPHA, steps=2, capture_after=1.5)
    with pytest.raises(TypeError, match="eps must be a float for a CUDA-graphed attack"):
        fastadv.GraphedPGD(model, eps=torch.tensor(EPS), alpha=ALPHA, steps=2)
    atk = fastadv.GraphedPGD(model, eps=EPS, alpha=ALPHA, steps=2)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        atk(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
