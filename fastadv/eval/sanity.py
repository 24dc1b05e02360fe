"""The sanity report: checks that an evaluation's attacks were strong enough to trust its
robust accuracy, after Carlini et al. ("On Evaluating Adversarial Robustness", 2019) and
Athalye et al. (gradient masking gives false security). Each check passes or warns, with
the numbers it was decided on:

(a) ``iterative-vs-single-step``: PGD accuracy ≤ FGSM accuracy (one example of slack).
(b) ``more-steps``, ``more-restarts``: doubling PGD's steps, or its restarts, changes its
    accuracy by < 1 pt (or by at most one example on a small subset).
(c) ``eps-monotone``, ``large-eps``: accuracy is non-increasing in ε, and ≈ 0 where the
    curve ends (an unbounded attacker always wins).
(d) ``black-box-weaker``: the gradient-free Square attack is not stronger than white-box PGD.
(e) ``input-gradients``: few correctly classified examples have an all-zero or non-finite
    input gradient of the loss (≤ 10 %).
(f) ``perturbation-bounds``: every adversarial input lies in
    ``[max(0, x − ε), min(1, x + ε)]`` (violations larger than fp32 rounding are an error
    before this report is ever made).

A gradient-masked model fails (e) outright (quantised inputs, saturated softmax), and
usually (b), (c) or (d) as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import reference
from ..attacks.losses import objective
from ..attacks.core import PRECISIONS
from .report import Check

GRADIENT_TOLERANCE = 0.10  # most examples must have a usable gradient
ROUNDING = 1e-6  # the most an external attack may stray outside the box (fp32 rounding)


# --------------------------------------------------------------------------- measurements


def input_gradient_flags(model, x: Tensor, y: Tensor, precision: str,
                         loss: str = "ce") -> tuple[Tensor, Tensor]:
    """Per example, whether ``g = ∇_x L(f(x), y)`` is all zero, and whether any entry of it
    is NaN/inf, for the loss PGD maximises (``"ce"``, ``"cw"`` or ``"dlr"``). Returns two
    bool tensors ``[b]``.

    A zero gradient at ``x`` stops every gradient attack dead (sign(0) = 0): it means
    quantised or otherwise non-differentiable inputs, or a saturated softmax where
    ``p_y = 1`` exactly in floating point."""
    x = x.detach().clone().requires_grad_(True)
    dtype = PRECISIONS[precision]
    with torch.enable_grad():
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        total = objective(loss)(logits.float(), y, False).sum()
        (g,) = torch.autograd.grad(total, x, allow_unused=True)
    if g is None:  # the output does not depend on x through autograd at all
        zero = torch.ones(len(x), dtype=torch.bool, device=x.device)
        return zero, torch.zeros_like(zero)
    flat = g.reshape(len(g), -1)
    return (flat == 0).all(dim=1), (~torch.isfinite(flat)).any(dim=1)


def bound_violation(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Per example, how far ``x_adv`` strays outside ``[max(0, x − ε), min(1, x + ε)]``
    (computed in fp32, as fastadv's ops compute their clamp); 0 inside, inf for NaN.
    Returns ``[b]`` float32."""
    lo, hi = reference.combined_bounds(x.float(), eps, 0.0, 1.0)
    xa = x_adv.float()
    out = torch.maximum(lo - xa, xa - hi).clamp_min(0).reshape(len(x), -1)
    out = torch.where(torch.isnan(xa.reshape(len(x), -1)), math.inf, out)
    return out.amax(dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    lo, hi = reference.combined_bounds(x.float(), eps, 0.0, 1.0)
    return reference.clamp(x_adv.float(), lo, hi).to(x_adv.dtype)


# --------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """What the checks are decided on. Counts are of correctly classified examples (after
    the attack), out of ``n``."""

    n: int
    robust: dict[str, int]  # attack -> examples still correct, of n
    only_broken_by: dict[str, int] = field(default_factory=dict)  # attack -> only it breaks
    doubling: dict | None = None  # {"n", "base", "steps", "restarts", "steps_k", "restarts_r", ...}
    curve: list[tuple[float, float]] | None = None  # (eps, accuracy)
    curve_n: int = 0
    grad_checked: int = 0
    grad_zero: int = 0
    grad_nonfinite: int = 0
    bounds: dict[str, dict] = field(default_factory=dict)  # attack -> {points, max, projected}


def _pct(count: int, n: int) -> float:
    return count / n if n else 0.0


def _close(delta_count: int, n: int) -> bool:
    """< 1 pt, or at most one example (a single example is > 1 pt below 100 examples)."""
    return abs(delta_count) <= 1 or abs(_pct(delta_count, n)) < 0.01


# --------------------------------------------------------------------------- checks


def iterative_vs_single_step(ev: Evidence) -> Check:
    name = "iterative-vs-single-step"
    if "pgd" not in ev.robust or "fgsm" not in ev.robust:
        return Check(name, "skipped", {}, "needs both pgd and fgsm among the attacks")
    pgd, fgsm = ev.robust["pgd"], ev.robust["fgsm"]
    ok = pgd <= fgsm + 1
    return Check(name, "pass" if ok else "warn",
                 {"pgd_acc": _pct(pgd, ev.n), "fgsm_acc": _pct(fgsm, ev.n), "n": ev.n},
                 "PGD is at least as strong as FGSM" if ok else
                 "PGD is weaker than one FGSM step: its gradients mislead it (masking) or it "
                 "is misconfigured")


def doubling(ev: Evidence) -> list[Check]:
    names = ("more-steps", "more-restarts")
    if ev.doubling is None:
        return [Check(n, "skipped", {}, "needs pgd among the attacks (and sanity runs)")
                for n in names]
    d, checks = ev.doubling, []
    for name, key, what in ((names[0], "steps", "steps"), (names[1], "restarts", "restarts")):
        delta = d[key] - d["base"]
        ok = _close(delta, d["n"])
        values = {"pgd_acc": _pct(d["base"], d["n"]), f"doubled_{what}_acc": _pct(d[key], d["n"]),
                  what: d[f"{what}_base"], f"doubled_{what}": d[f"{what}_doubled"], "n": d["n"]}
        checks.append(Check(name, "pass" if ok else "warn", values,
                            f"doubling PGD's {what} changes accuracy by < 1 pt: converged" if ok
                            else f"doubling PGD's {what} changes accuracy by "
                                 f"{abs(_pct(delta, d['n'])):.1%}: the attack has not converged; "
                                 "raise --steps/--restarts"))
    return checks


def curve_checks(ev: Evidence) -> list[Check]:
    names = ("eps-monotone", "large-eps")
    if not ev.curve:
        return [Check(n, "skipped", {}, "no accuracy-vs-eps curve computed") for n in names]
    eps = [e for e, _ in ev.curve]
    acc = [a for _, a in ev.curve]
    rises = [(eps[i + 1], acc[i + 1] - acc[i]) for i in range(len(acc) - 1)
             if not (acc[i + 1] <= acc[i] or _close(round((acc[i + 1] - acc[i]) * ev.curve_n),
                                                     ev.curve_n))]
    mono = Check(names[0], "warn" if rises else "pass",
                 {"eps": eps, "accuracy": acc, "n": ev.curve_n},
                 "accuracy never rises with eps" if not rises else
                 f"accuracy rises with eps (at eps {rises[0][0]:.4g} by {rises[0][1]:.1%}): a "
                 "stronger attacker doing worse means the attack is unreliable")
    end_ok = _close(round(acc[-1] * ev.curve_n), ev.curve_n)
    large = Check(names[1], "pass" if end_ok else "warn",
                  {"eps": eps[-1], "accuracy": acc[-1], "n": ev.curve_n},
                  f"accuracy reaches ~0 at eps {eps[-1]:.4g}" if end_ok else
                  f"accuracy is still {acc[-1]:.1%} at eps {eps[-1]:.4g}, where any image can "
                  "be reached: the gradient attack cannot find what exists (masking)")
    return [mono, large]


def black_box_weaker(ev: Evidence) -> Check:
    name = "black-box-weaker"
    white = [a for a in ("pgd", "fgsm") if a in ev.robust]
    if "square" not in ev.robust or not white:
        return Check(name, "skipped", {}, "needs square and pgd or fgsm among the attacks")
    best = min(white, key=lambda a: ev.robust[a])
    sq, wb = ev.robust["square"], ev.robust[best]
    ok = sq >= wb or _close(sq - wb, ev.n)
    return Check(name, "pass" if ok else "warn",
                 {"square_acc": _pct(sq, ev.n), f"{best}_acc": _pct(wb, ev.n),
                  "only_square_breaks": ev.only_broken_by.get("square", 0), "n": ev.n},
                 "the gradient-free attack is no stronger than the white-box one" if ok else
                 f"gradient-free Square beats white-box {best.upper()} by "
                 f"{_pct(wb - sq, ev.n):.1%}: gradients are masked or misleading")


def input_gradients(ev: Evidence) -> Check:
    name = "input-gradients"
    if not ev.grad_checked:
        return Check(name, "skipped", {}, "no correctly classified example to check")
    bad = ev.grad_zero + ev.grad_nonfinite
    frac = bad / ev.grad_checked
    ok = frac <= GRADIENT_TOLERANCE
    values = {"zero": ev.grad_zero, "nonfinite": ev.grad_nonfinite, "checked": ev.grad_checked,
              "bad_fraction": frac}
    return Check(name, "pass" if ok else "warn", values,
                 "input gradients are nonzero and finite" if ok else
                 f"{frac:.0%} of examples have an all-zero or NaN/inf input gradient: gradient "
                 "attacks cannot move them (quantised inputs or a saturated softmax)")


def perturbation_bounds(ev: Evidence) -> Check:
    name = "perturbation-bounds"
    points = sum(b["points"] for b in ev.bounds.values())
    worst = max((b["max"] for b in ev.bounds.values()), default=0.0)
    projected = sum(b["projected"] for b in ev.bounds.values())
    ok = worst <= ROUNDING
    message = (f"all {points} adversarial inputs lie in [max(0, x-eps), min(1, x+eps)]"
               + (f" ({projected} projected from <= {worst:.1e} outside: fp32 rounding of an "
                  "external attack)" if projected else " exactly (fp32)"))
    return Check(name, "pass" if ok else "warn",
                 {"points": points, "max_violation": worst, "projected": projected},
                 message if ok else f"adversarial inputs up to {worst:.3g} outside the ball")


def run_checks(ev: Evidence) -> list[Check]:
    return [iterative_vs_single_step(ev), *doubling(ev), *curve_checks(ev), black_box_weaker(ev),
            input_gradients(ev), perturbation_bounds(ev)]
