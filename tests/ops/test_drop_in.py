"""fastadv's fused step as a drop-in for the update lines PGD code already has: bit for bit
against each common rounding order, written here from the math (no peer code copied):

- the perturbation form of robust_overfitting and fast_adversarial (``pgd_delta_``,
  ``order="delta_box"``), advertorch's (``order="image_box"``);
- the image form of torchattacks (``pgd_``, ``order="via_delta"``) and of Madry et al.'s
  code (``pgd_``, ``order="fused"``);

over fp32/bf16/fp16 (the peer's lines computed in fp32, rounded once, as the op contract
says), odd shapes, channels_last and non-contiguous tensors, per-example and per-channel ε;
then whole PGD functions in each style, with restarts and per-step early stopping, where
swapping the update lines for one fastadv call leaves every perturbation bit-identical."""

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastadv
from fastadv import reference
from fastadv.errors import FormWarning
from helpers import DTYPES, assert_ulp_close, step_ulps, to_layout

README = Path(__file__).resolve().parents[2] / "README.md"


def clamp(X, lower, upper):
    """The delta-form codebases' helper (min first, then max) for tensor limits; torch.clamp,
    as they call it, for float ones."""
    if not isinstance(lower, torch.Tensor) or not isinstance(upper, torch.Tensor):
        return torch.clamp(X, min=lower, max=upper)
    return torch.max(torch.min(X, upper), lower)


def as_tensor(v, like):
    return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=like.dtype)


# The update lines, in fp32, as each codebase writes them.
def delta_box(d, g, x, eps, alpha, lower, upper):
    d = clamp(d + alpha * torch.sign(g), -eps, eps)
    return clamp(d, lower - x, upper - x)


def image_box(d, g, x, eps, alpha, lower, upper):
    d = d + alpha * torch.sign(g)
    d = clamp(d, -eps, eps)
    return clamp(x + d, lower, upper) - x


def via_delta(x_adv, g, x, eps, alpha, lower, upper):
    x_adv = x_adv + alpha * g.sign()
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=lower, max=upper)


def fused(x_adv, g, x, eps, alpha, lower, upper):
    x_adv = x_adv + alpha * torch.sign(g)
    x_adv = torch.clamp(x_adv, x - eps, x + eps)
    return torch.clamp(x_adv, lower, upper)


PEERS = {  # name: (peer lines, fastadv op, order, perturbation form)
    "robust_overfitting/fast_adversarial": (delta_box, fastadv.pgd_delta_, "delta_box", True),
    "advertorch": (image_box, fastadv.pgd_delta_, "image_box", True),
    "torchattacks": (via_delta, fastadv.pgd_, "via_delta", False),
    "madry": (fused, fastadv.pgd_, "fused", False),
}


def _state(shape, dtype, eps_kind, gen):
    x = torch.rand(shape, generator=gen)
    channels = shape[1]
    eps = {"float": 8 / 255,
           "per example": torch.rand(shape[0], generator=gen) * 0.1,
           "per channel": torch.rand(channels, 1, 1, generator=gen) * 0.1,
           "per example and channel": torch.rand(shape[0], channels, 1, 1, generator=gen) * 0.1,
           }[eps_kind]
    e = eps.view(-1, 1, 1, 1) if isinstance(eps, torch.Tensor) and eps.dim() == 1 else eps
    delta = (torch.rand(shape, generator=gen) * 2 - 1) * as_tensor(e, x)
    delta = torch.max(torch.min(delta, 1 - x), -x)  # a start inside the box
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::5] = 0.0  # sign(0) = 0 everywhere; NaN differs (torch.sign gives NaN)
    return x.to(dtype), delta.to(dtype), grad, eps, e


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps_kind", ["float", "per example", "per channel",
                                      "per example and channel"])
def test_one_step_is_the_peers_lines_bit_for_bit(device_backend, peer, dtype, eps_kind):
    device, backend = device_backend
    lines, op, order, perturbation = PEERS[peer]
    gen = torch.Generator().manual_seed(hash((peer, eps_kind)) % 2**31)
    for shape, layout in [((4, 3, 5, 7), "contiguous"), ((3, 3, 6, 5), "channels_last"),
                          ((2, 3, 4, 6), "strided"), ((1, 3, 1, 1), "contiguous")]:
        x, delta, grad, eps, e = _state(shape, dtype, eps_kind, gen)
        alpha = eps / 4 if isinstance(eps, float) else eps * 0.25
        a = alpha.view(-1, 1, 1, 1) if isinstance(alpha, torch.Tensor) and alpha.dim() == 1 \
            else alpha
        start = delta if perturbation else x + delta
        want = lines(start.float(), grad, x.float(), as_tensor(e, x.float()),
                     as_tensor(a, x.float()), torch.tensor(0.0), torch.tensor(1.0)).to(dtype)
        got = to_layout(start.clone(), layout).to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FormWarning)  # the start lies in its box
            op(got, to_layout(grad, layout).to(device), to_layout(x, layout).to(device),
               eps=eps, alpha=alpha, order=order)
        assert_ulp_close(got.cpu(), want, ulps=step_ulps(device, backend, dtype),
                         msg=f"{peer} {layout} {list(shape)}")


@pytest.mark.parametrize("order", ["delta_box", "image_box"])
def test_per_channel_bounds_in_normalised_space(device_backend, order):
    """fast_adversarial's setting: inputs normalised outside the model, so ε, α and the valid
    range are per channel ([3, 1, 1]); one call instead of a loop over channels."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(3, 1, 1)
    lower_limit, upper_limit = (0 - mu) / std, (1 - mu) / std
    epsilon, alpha = (8 / 255) / std, (2 / 255) / std
    X = (torch.rand(5, 3, 7, 7, generator=gen) - mu) / std
    d = clamp((torch.rand(X.shape, generator=gen) * 2 - 1) * epsilon,
              lower_limit - X, upper_limit - X)
    g = torch.randn(X.shape, generator=gen)
    lines = delta_box if order == "delta_box" else image_box
    want = lines(d, g, X, epsilon, alpha, lower_limit, upper_limit)
    got = d.clone().to(device)
    fastadv.pgd_delta_(got, g.to(device), X.to(device), eps=epsilon.to(device),
                       alpha=alpha.to(device), lower=lower_limit.to(device),
                       upper=upper_limit.to(device), order=order)
    assert torch.equal(got.cpu(), want)


def test_per_element_bounds(device_backend):
    """The delta-space box ``lower_limit - X`` as per-element bounds of pgd_ (x_nat = 0):
    the same numbers as the perturbation form."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(4)
    X = torch.rand(4, 3, 5, 5, generator=gen)
    d = torch.max(torch.min((torch.rand(X.shape, generator=gen) * 2 - 1) * 0.03, 1 - X), -X)
    g = torch.randn(X.shape, generator=gen)
    got = d.clone().to(device)
    fastadv.pgd_(got, g.to(device), torch.zeros_like(got), eps=0.03, alpha=0.01,
                 lower=(0 - X).to(device), upper=(1 - X).to(device))
    want = torch.clamp(d + 0.01 * torch.sign(g), torch.max(-X, torch.tensor(-0.03)),
                       torch.min(1 - X, torch.tensor(0.03)))
    assert torch.equal(got.cpu(), want)
    for shape in [(4, 1, 1, 1), (5,), (1, 1, 5, 1), (4, 3, 5, 5), (3, 5, 1)]:
        lower = torch.rand(shape, generator=gen) * 0.3  # per example, per column, ...
        for layout in ("contiguous", "channels_last", "strided"):
            x_adv = to_layout(X.clone(), layout).to(device)
            fastadv.pgd_(x_adv, to_layout(g, layout).to(device), to_layout(X, layout).to(device),
                         eps=0.03, alpha=0.01, lower=lower.to(device), upper=1.0)
            want = torch.clamp(X + 0.01 * torch.sign(g), torch.max(lower, X - 0.03),
                               torch.clamp_max(X + 0.03, 1.0))
            assert torch.equal(x_adv.cpu(), want), (shape, layout)
    upper = 0.7 + torch.rand(3, 1, 1, generator=gen) * 0.3  # per channel: the fast path
    for layout in ("contiguous", "channels_last", "strided"):
        d2 = to_layout(d.clone(), layout).to(device)
        fastadv.pgd_delta_(d2, to_layout(g, layout).to(device), to_layout(X, layout).to(device),
                           eps=0.03, alpha=0.01, upper=upper.to(device))
        assert torch.equal(d2.cpu(), delta_box(d, g, X, 0.03, 0.01, 0.0, upper)), layout


def test_one_dimensional_inputs_with_per_element_bounds(device_backend):
    """x of shape [B] (one value per example): a [B] bound is per element; the step, its
    functional twin's backward and the random start all take it."""
    device, _ = device_backend
    gen = torch.Generator().manual_seed(13)
    x = torch.rand(6, generator=gen).to(device)
    g = torch.randn(6, generator=gen).to(device)
    lower = (torch.rand(6, generator=gen) * 0.3).to(device)
    x_adv = x.clone()
    fastadv.pgd_(x_adv, g, x, eps=0.1, alpha=0.05, lower=lower)
    want = torch.clamp(x + 0.05 * torch.sign(g), torch.max(lower, x - 0.1),
                       torch.clamp_max(x + 0.1, 1.0))
    assert torch.equal(x_adv, want)
    leaf = x.clone().requires_grad_()
    fastadv.pgd_step(leaf, g, x, eps=0.1, alpha=0.05, lower=lower).sum().backward()
    assert leaf.grad.shape == x.shape
    start = torch.empty_like(x)
    fastadv.random_init_(start, x, eps=0.1, lower=lower)
    lo, hi = torch.max(lower, x - 0.1), torch.clamp_max(x + 0.1, 1.0)
    # inside the box; where lower lies above the ball the box is empty and clamp gives hi
    assert torch.where(lo <= hi, (start >= lo) & (start <= hi), start == hi).all()


# --------------------------------------------------------------------------- whole attacks


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32, 10)).eval()


def delta_style_attack(model, X, y, epsilon, alpha, lower_limit, upper_limit, update, *,
                       steps=10, restarts=2, seed=0):
    """A PGD attack in the perturbation form with restarts and per-step early stopping (only
    the still-correct examples step), as in robust_overfitting and fast_adversarial. The
    random start is per channel when epsilon is."""
    gen = torch.Generator().manual_seed(seed)
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(X)
    for _ in range(restarts):
        delta = torch.zeros_like(X)
        eps_c = epsilon.view(-1) if isinstance(epsilon, torch.Tensor) else [epsilon] * 3
        for c in range(X.shape[1]):
            delta[:, c].uniform_(-float(eps_c[c]), float(eps_c[c]), generator=gen)
        delta.data = clamp(delta, lower_limit - X, upper_limit - X)
        delta.requires_grad = True
        for _ in range(steps):
            output = model(X + delta)
            index = torch.where(output.max(1)[1] == y)[0]
            if len(index) == 0:
                break
            F.cross_entropy(output, y).backward()
            grad = delta.grad.detach()
            d, g, x = delta[index], grad[index], X[index]
            d = update(d, g, x)
            delta.data[index] = d
            delta.grad.zero_()
        all_loss = F.cross_entropy(model(X + delta), y, reduction="none").detach()
        better = all_loss >= max_loss
        max_delta[better] = delta.detach()[better]
        max_loss = torch.max(max_loss, all_loss)
    return max_delta


def image_style_attack(model, images, labels, eps, alpha, update, *, steps=10, restarts=2,
                       seed=0):
    """torchattacks-style PGD on the image, with restarts (the highest loss kept)."""
    gen = torch.Generator().manual_seed(seed)
    best, best_loss = images.clone(), torch.full((len(images),), -float("inf"))
    for _ in range(restarts):
        adv = images + torch.empty_like(images).uniform_(-eps, eps, generator=gen)
        adv = torch.clamp(adv, min=0, max=1).detach()
        for _ in range(steps):
            adv.requires_grad = True
            cost = F.cross_entropy(model(adv), labels)
            grad = torch.autograd.grad(cost, adv)[0]
            adv = update(adv.detach(), grad, images)
        loss = F.cross_entropy(model(adv), labels, reduction="none").detach()
        better = loss > best_loss
        best[better], best_loss[better] = adv[better], loss[better]
    return best


def _cpu_model_only(device_backend):
    """The whole attacks run their model on the CPU, where its gradients are deterministic
    (the one-step tests above cover the GPU kernels bit for bit)."""
    device, _ = device_backend
    if device.type != "cpu":
        pytest.skip("whole attacks: CPU model and tensors")


def test_delta_style_attack_with_early_stop_and_restarts(device_backend):
    _cpu_model_only(device_backend)
    model = _model()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.rand(12, 3, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen)
    eps, alpha = 8 / 255, 2 / 255
    y[:6] = model(X[:6]).argmax(1)  # some start correct, so early stopping has work to do
    peer = delta_style_attack(model, X, y, eps, alpha, 0, 1,
                              lambda d, g, x: delta_box(d, g, x, eps, alpha, 0, 1))
    ours = delta_style_attack(model, X, y, eps, alpha, 0, 1,
                              lambda d, g, x: fastadv.pgd_delta_(d, g, x, eps=eps, alpha=alpha))
    assert torch.equal(ours, peer)
    assert peer.abs().max() > 0


def test_normalised_space_attack_with_per_channel_eps(device_backend):
    _cpu_model_only(device_backend)
    mu = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(3, 1, 1)
    lower_limit, upper_limit = (0 - mu) / std, (1 - mu) / std
    epsilon, alpha = (8 / 255) / std, (2 / 255) / std
    model = _model()
    gen = torch.Generator().manual_seed(2)
    X = (torch.rand(10, 3, 8, 8, generator=gen) - mu) / std
    y = model(X).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    for order, lines in (("delta_box", delta_box), ("image_box", image_box)):
        peer = delta_style_attack(model, X, y, epsilon, alpha, lower_limit, upper_limit,
                                  lambda d, g, x: lines(d, g, x, epsilon, alpha, lower_limit,
                                                        upper_limit))
        ours = delta_style_attack(model, X, y, epsilon, alpha, lower_limit, upper_limit,
                                  lambda d, g, x: fastadv.pgd_delta_(
                                      d, g, x, eps=epsilon, alpha=alpha, lower=lower_limit,
                                      upper=upper_limit, order=order))
        assert torch.equal(ours, peer), order


@pytest.mark.parametrize("order", ["via_delta", "fused"])
def test_image_style_attack(device_backend, order):
    _cpu_model_only(device_backend)
    model = _model()
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(10, 3, 8, 8, generator=gen)
    images[:, :, :2] = 0.0  # black rows: v - x rounds near 0, where the orders differ
    labels = model(images).argmax(1)
    eps, alpha = 8 / 255, 2 / 255
    lines = via_delta if order == "via_delta" else fused
    peer = image_style_attack(model, images, labels, eps, alpha,
                              lambda a, g, x: lines(a, g, x, eps, alpha, 0, 1))
    ours = image_style_attack(model, images, labels, eps, alpha,
                              lambda a, g, x: fastadv.pgd_(a, g, x, eps=eps, alpha=alpha,
                                                           order=order))
    assert torch.equal(ours, peer)


# --------------------------------------------------------------------------- misuse


def test_misused_forms_are_not_silent():
    gen = torch.Generator().manual_seed(6)
    X = torch.rand(4, 3, 5, 5, generator=gen)
    delta = (torch.rand(X.shape, generator=gen) * 2 - 1) * 0.03
    g = torch.randn(X.shape, generator=gen)
    for centre in (torch.zeros_like(X), X):  # a perturbation handed to the image form
        with pytest.warns(FormWarning, match="x_adv lies outside .*pgd_delta_"):
            fastadv.pgd_(delta.clone(), g, centre, eps=0.03, alpha=0.01)
    with pytest.warns(FormWarning, match="delta lies outside .* fastadv.pgd_"):
        fastadv.pgd_delta_(X.clone(), g, X.clone(), eps=0.03, alpha=0.01)
    normalised = (X - 0.5) / 0.25  # normalised inputs with the default [0, 1] range
    with pytest.warns(FormWarning, match="per channel"):
        fastadv.pgd_(normalised.clone(), g, normalised, eps=0.03, alpha=0.01)


def test_a_new_tensor_at_a_freed_address_is_checked_again():
    """The ops skip the start check for a tensor they wrote last; a new tensor the allocator
    puts where a checked one lived (same address, shape, dtype and version 0) is not that
    tensor. from_numpy pins the address so the reuse is certain, not left to the allocator."""
    gen = torch.Generator().manual_seed(7)
    x = 0.2 + 0.6 * torch.rand(2, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    memory = (torch.ones(x.shape, dtype=torch.float64) * 0.5).numpy()  # outside the eps box
    addresses = []
    for _ in range(2):
        delta = torch.from_numpy(memory)
        addresses.append(delta.data_ptr())
        with pytest.warns(FormWarning, match="delta lies outside"):
            fastadv.pgd_delta_step(delta, g, x, eps=0.05, alpha=0.02)
        del delta
    assert addresses[0] == addresses[1]
    kept = torch.from_numpy(memory)  # the same live tensor again: checked once, not per step
    with pytest.warns(FormWarning):
        fastadv.pgd_delta_step(kept, g, x, eps=0.05, alpha=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FormWarning)
        fastadv.pgd_delta_step(kept, g, x, eps=0.05, alpha=0.02)


@pytest.mark.parametrize("op, kwargs, match", [
    (fastadv.pgd_, {"epsilon": 0.03, "alpha": 0.01}, "did you mean eps="),
    (fastadv.pgd_, {"eps": 0.03, "step_size": 0.01}, "did you mean alpha="),
    (fastadv.pgd_, {"eps": 0.03, "alpha": 0.01, "clip_min": -1.0}, "did you mean lower="),
    (fastadv.pgd_, {"eps": 0.03, "alpha": 0.01, "delta": None}, "pgd_delta_"),
    (fastadv.pgd_delta_, {"eps": 0.03, "eps_iter": 0.01}, "did you mean alpha="),
    (fastadv.pgd_delta_, {"eps": 0.03, "alpha": 0.01, "x_nat": None}, r"fastadv\.pgd_\("),
    (fastadv.pgd_delta_, {"eps": 0.03, "alpha": 0.01, "norm": "l2"}, "it takes eps"),
    (fastadv.pgd_delta_, {"eps": 0.03, "alpha": 0.01, "order": "fused"}, "delta_box"),
    (fastadv.pgd_, {"eps": 0.03, "alpha": 0.01, "order": "delta_box"}, "via_delta"),
    (fastadv.pgd_, {"eps": 0.03, "alpha": 0.01, "norm": "l2", "order": "via_delta"}, "l2"),
    (fastadv.pgd_delta_, {"alpha": 0.01}, "missing the keyword argument eps="),
    (fastadv.pgd_delta_, {"eps": torch.zeros(1, 1, 5, 1), "alpha": 0.01}, "along dim 2"),
    (fastadv.pgd_delta_, {"eps": torch.zeros(3), "alpha": 0.01}, r"\[C, 1, 1\]|broadcasts"),
    (fastadv.pgd_, {"eps": 0.03, "alpha": 0.01, "upper": torch.ones(2, 3, 1, 1)}, "broadcasts"),
])
def test_misuse_errors_name_the_rule_and_leave_the_data(op, kwargs, match):
    gen = torch.Generator().manual_seed(7)
    X = torch.rand(4, 3, 5, 5, generator=gen)
    written = X.clone() if op is fastadv.pgd_ else torch.zeros_like(X)
    before = written.clone()
    with pytest.raises((TypeError, ValueError), match=match):
        op(written, torch.randn(X.shape, generator=gen), X, **kwargs)
    assert torch.equal(written, before)


def test_random_delta_lies_in_its_box_and_matches_across_orders(device_backend):
    device, _ = device_backend
    gen = torch.Generator().manual_seed(8)
    X = torch.rand(6, 3, 5, 5, generator=gen).to(device)
    eps = (torch.rand(3, 1, 1, generator=gen) * 0.1).to(device)
    starts = {}
    for order in ("delta_box", "image_box"):
        d = torch.empty_like(X)
        fastadv.random_delta_(d, X, eps=eps, order=order,
                              generator=torch.Generator().manual_seed(9))
        assert (d.abs() <= eps).all() and ((X + d) >= 0).all() and ((X + d) <= 1 + 1e-7).all()
        starts[order] = d.cpu()
    x_adv = torch.empty_like(X)
    fastadv.random_init_(x_adv, X, eps=eps, generator=torch.Generator().manual_seed(9))
    # the same Philox draw in every form: equal up to the rounding of x + n vs n
    assert (starts["delta_box"] - (x_adv - X).cpu()).abs().max() < 1e-6
    assert (starts["image_box"] - starts["delta_box"]).abs().max() < 1e-6
    # and exactly the reference's numbers for the seed drawn from that generator
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64,
                         generator=torch.Generator().manual_seed(9))
    for order, code in (("delta_box", 2), ("image_box", 3)):
        want = reference.random_init(X.cpu(), X.cpu(), seed, eps.cpu().view(1, 3, 1, 1),
                                     0.0, 1.0, code)
        assert torch.equal(starts[order], want), order


# --------------------------------------------------------------------------- the README


def _readme_diffs():
    text = README.read_text()
    section = text.split("## Dropping fastadv into code you already have", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```diff\n(.*?)```", section, re.S)


def test_readme_drop_in_diffs_run_as_written():
    """Each diff of the README's drop-in section, its - lines and its + lines run on the same
    state: the same perturbation (the + lines are one fastadv call)."""
    diffs = _readme_diffs()
    assert len(diffs) == 3
    gen = torch.Generator().manual_seed(10)
    mu = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(3, 1, 1)
    images = torch.rand(4, 3, 6, 6, generator=gen)
    for diff in diffs:
        old = "\n".join(line[1:] for line in diff.splitlines() if line.startswith("-"))
        new = "\n".join(line[1:] for line in diff.splitlines() if line.startswith("+"))
        assert old and new and "fastadv." in new
        results = []
        for code in (old, new):
            X = images.clone()
            scope = {"torch": torch, "fastadv": fastadv, "clamp": clamp, "X": X,
                     "images": images.clone(), "epsilon": 8 / 255, "alpha": 2 / 255,
                     "eps": 8 / 255, "lower_limit": 0.0, "upper_limit": 1.0}
            if "std" in diff:  # the normalised-space example
                scope.update(X=(images - mu) / std, epsilon=(8 / 255) / std,
                             alpha=(2 / 255) / std, lower_limit=(0 - mu) / std,
                             upper_limit=(1 - mu) / std, std=std, mu=mu)
            g = torch.randn(images.shape, generator=torch.Generator().manual_seed(11))
            scope.update(grad=g, delta=torch.zeros_like(images),
                         adv_images=images.clone())
            scope["delta"].uniform_(-0.01, 0.01, generator=torch.Generator().manual_seed(12))
            scope["adv_images"] = (images + scope["delta"]).clamp(0, 1)
            exec(code, scope)
            results.append(scope["adv_images"] if "adv_images" in code else scope["delta"])
        assert torch.equal(results[0], results[1]), diff
