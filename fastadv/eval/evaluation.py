"""``fastadv.evaluate``: robust accuracy as the per-example worst case over several attacks,
with the sanity runs that tell whether to trust it, and the accuracy-vs-ε curve.

The work is a list of units, each a pure function of (model, data, settings, seed, its key):

- ``batch/i``: clean predictions, every attack, the input-gradient and bound checks of
  batch ``i`` (all examples);
- ``more-steps/i``, ``more-restarts/i``: PGD with doubled steps / restarts on batch ``i`` of
  the sanity subset (the first ``sanity_examples`` examples);
- ``curve/k``: PGD at the k-th radius of the curve's grid, on the sanity subset.

Finished units are kept in a :class:`~fastadv.eval.store.Store` (and its partial file), so
a killed run resumes where it stopped with identical results.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import time

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._version import __version__
from ..attacks import attack_mode, pgd
from ..attacks.core import model_logits
from . import sanity
from .attacks import (EXTERNAL, AttackError, AttackSettings, check_attacks, check_settings,
                      run_attack, torchattacks, unit_seed)
from .curve import eps_grid
from .report import AttackResult, EvalReport, bits
from .store import Store, fingerprint

DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack", "square")


def run_record(model: nn.Module, x: Tensor, y: Tensor, names, settings: AttackSettings, *,
               batch_size: int, seed: int, sanity_runs: bool, sanity_examples: int,
               curve: bool, curve_steps: int) -> dict:
    """What an evaluation is, as its partial file and its report record it: a resume, and
    ``--resume auto`` finding a finished report, compare it exactly."""
    n = len(y)
    return {"attacks": list(names), "eps": float(settings.eps), "steps": settings.steps,
            "restarts": settings.restarts, "alpha": settings.pgd_alpha, "loss": settings.loss,
            "square_queries": settings.square_queries, "batch_size": batch_size,
            "precision": settings.precision, "seed": seed, "sanity_runs": sanity_runs,
            "sanity_examples": min(sanity_examples, n), "curve": curve,
            "curve_steps": curve_steps, "max_batch": settings.max_batch, "n_examples": n,
            # which weights and data these results belong to (a resume checks it)
            "fingerprint": fingerprint(model, x, y)}


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
             attacks=DEFAULT_ATTACKS, steps: int = 50, restarts: int = 10,
             alpha: float | None = None, loss: str = "ce", square_queries: int = 5000,
             batch_size: int = 256, precision: str = "fp32", seed: int = 0,
             sanity_runs: bool = True, sanity_examples: int = 500, curve: bool = True,
             curve_steps: int = 20, max_batch: int | None = None, progress: bool = True,
             state_file: str | None = None, resume: bool = False,
             keep_state_file: bool = False) -> EvalReport:
    r"""Evaluate ``model``'s robustness on ``(x, y)`` in the l-inf ball of radius ``eps``.

    Per example ``i`` and attack ``a`` (each run on every correctly classified example):

    .. math:: r_{i,a} = [\,f(A_a(x_i)) = y_i\,],\qquad
              \text{robust\_acc} = \frac{1}{N}\sum_i [f(x_i) = y_i]\prod_a r_{i,a}

    the worst case over attacks, as AutoAttack and RobustBench report it.

    Args:
        model: maps ``x`` ``[B, C, H, W]`` in [0, 1] to logits ``[B, num_classes]``
            (normalising inside); batches go to the device of its parameters.
        x, y: float inputs ``[N, C, H, W]`` in [0, 1] and int labels ``[N]`` (any device).
        eps: the l-inf radius, in [0, 1].
        attacks: names from ``fastadv.eval.ATTACKS`` (``fgsm``, ``pgd``, ``autoattack``,
            ``square``; the last two need ``pip install "fastadv[eval]"``).
        steps, restarts, alpha, loss: PGD's; ``alpha=None`` is ``2.5 eps / steps``.
        square_queries: the Square attack's query budget per example.
        batch_size: examples per batch (and per resumable unit).
        precision: ``fp32`` or ``bf16`` (the model under autocast; inputs stay fp32).
        seed: all attack randomness derives from it (and a unit's key): reproducible.
        sanity_runs: run the extra sanity attacks (PGD with doubled steps and restarts);
            the other checks reuse the evaluation's own results.
        sanity_examples: the first this many examples are the subset the sanity runs and
            the curve use.
        curve: compute accuracy vs ε (PGD, ``curve_steps`` steps, one restart) from 0 up to
            the first radius where accuracy is 0.
        max_batch: most examples per forward pass inside PGD (memory).
        progress: a tqdm bar over units of work.
        state_file: save completed units there (atomically) after each; ``resume=True``
            picks them up after a kill. Removed when the evaluation completes, unless
            ``keep_state_file`` (the CLI removes it only once the report is written).

    Returns:
        an :class:`~fastadv.eval.report.EvalReport`.
    """
    names = check_attacks(attacks)
    settings = AttackSettings(eps=eps, steps=steps, restarts=restarts, alpha=alpha, loss=loss,
                              square_queries=square_queries, precision=precision,
                              max_batch=max_batch)
    check_settings(settings)
    x, y = checked_data(model, x, y)
    for name, value, low in (("batch_size", batch_size, 1), ("sanity_examples", sanity_examples, 1),
                             ("curve_steps", curve_steps, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if any(n in EXTERNAL for n in names):
        torchattacks()  # fail now, not after an hour of PGD
    device = next((p.device for p in model.parameters()), x.device)

    n = len(y)
    m = min(sanity_examples, n)
    run = run_record(model, x, y, names, settings, batch_size=batch_size, seed=seed,
                     sanity_runs=sanity_runs, sanity_examples=sanity_examples, curve=curve,
                     curve_steps=curve_steps)
    store = Store(state_file, run, resume)

    job = _Job(model, x, y, names, settings, seed, batch_size, m, curve_steps, device, store)
    doubling = sanity_runs and "pgd" in names
    grid = list(eps_grid(eps)) if curve else []
    bar = tqdm(total=job.batches(n) * (1 + len(names)) + (2 * job.batches(m) if doubling else 0)
               + len(grid),
               desc="fastadv.eval", unit="unit", disable=not progress, dynamic_ncols=True)
    with attack_mode(model), bar:
        main = job.run_batches(bar)
        clean = torch.cat([u["clean"] for u in main])
        robust = {a: torch.cat([u["robust"][a] for u in main]) for a in names}
        doubled = job.run_doubling(bar) if doubling else None
        points = job.run_curve(bar, grid, int(clean[:m].sum()))

    worst = worst_without(clean, robust, skip=None)
    ev = _evidence(main, clean, robust, doubled, points, job)
    seconds = {"clean": sum(u["seconds"]["clean"] for u in main)}
    seconds.update({a: sum(u["seconds"][a] for u in main) for a in names})
    seconds["sanity"] = sum(u["seconds"]["gradients"] for u in main) + sum(
        store[k]["seconds"] for k in store.units if k.startswith("more-"))
    seconds["curve"] = sum(store[k]["seconds"] for k in store.units if k.startswith("curve/"))
    seconds["total"] = sum(seconds.values())

    report = EvalReport(
        clean_acc=int(clean.sum()) / n, robust_acc=int(worst.sum()) / n,
        attacks={a: AttackResult(int(robust[a].sum()) / n, settings.describe(a),
                                 seconds[a]) for a in names},
        eps=float(eps), n_examples=n,
        settings={k: v for k, v in run.items() if k not in ("attacks", "eps", "n_examples")},
        sanity=sanity.run_checks(ev),
        curve=({"attack": f"PGD-{curve_steps}, 1 restart, alpha=2.5*eps/{curve_steps}, "
                          f"loss={loss}", "n_examples": m, "points": points} if points else None),
        per_example={"clean": bits(clean), **{a: bits(robust[a]) for a in names},
                     "worst_case": bits(worst)},
        versions=versions(), device=describe_device(device), seconds=seconds)
    if not keep_state_file:
        store.finish()
    return report


def worst_without(clean: Tensor, robust: dict, skip: str | None) -> Tensor:
    """Per example, correct clean and under every attack except ``skip`` (None: all)."""
    out = clean.clone()
    for a, r in robust.items():
        if a != skip:
            out &= r
    return out


def _evidence(main: list, clean: Tensor, robust: dict, doubled: dict | None, points: list,
              job: "_Job") -> sanity.Evidence:
    """What the sanity checks decide on, from the units' results."""
    names, s, m = job.names, job.settings, job.m
    ev = sanity.Evidence(
        n=len(clean), robust={a: int(robust[a].sum()) for a in names},
        only_broken_by={a: int((worst_without(clean, robust, a) & ~robust[a]).sum())
                        for a in names},
        curve=[(p["eps"], p["accuracy"]) for p in points] or None, curve_n=m,
        grad_checked=sum(u["grad_checked"] for u in main),
        grad_zero=sum(u["grad_zero"] for u in main),
        grad_nonfinite=sum(u["grad_nonfinite"] for u in main),
        bounds={a: {"points": sum(u["bounds"][a]["points"] for u in main),
                    "max": max(u["bounds"][a]["max"] for u in main),
                    "projected": sum(u["bounds"][a]["projected"] for u in main)} for a in names})
    if doubled is not None:
        ev.doubling = {"n": m, "base": int(robust["pgd"][:m].sum()),
                       "steps": int(doubled["steps"].sum()),
                       "restarts": int(doubled["restarts"].sum()),
                       "steps_base": s.steps, "steps_doubled": 2 * s.steps,
                       "restarts_base": s.restarts, "restarts_doubled": 2 * s.restarts}
    return ev


# --------------------------------------------------------------------------- the units


class _Job:
    """The units of one evaluation and the state they share."""

    def __init__(self, model, x, y, names, settings, seed, batch_size, m, curve_steps, device,
                 store):
        self.model, self.x, self.y, self.names = model, x, y, names
        self.settings, self.seed, self.batch_size, self.m = settings, seed, batch_size, m
        self.curve_steps, self.device, self.store = curve_steps, device, store
        self.num_classes = None

    def batches(self, count: int) -> int:
        return math.ceil(count / self.batch_size)

    def data(self, i: int, limit: int | None = None):
        stop = min((i + 1) * self.batch_size, limit if limit is not None else len(self.y))
        sl = slice(i * self.batch_size, stop)
        return self.x[sl].to(self.device), self.y[sl].to(self.device)

    def unit(self, key: str, bar, fn, *args):
        """The stored result of ``key``, or computed now (and stored)."""
        if key not in self.store:
            self.store.put(key, fn(*args))
        bar.update()
        return self.store[key]

    def run_batches(self, bar) -> list[dict]:
        """Every batch: clean and the gradient check, then each attack (a unit each, so a
        resume loses at most one attack on one batch) with its bound check."""
        results, seen, still = [], 0, 0
        for i in range(self.batches(len(self.y))):
            c = self.unit(f"batch/{i}/clean", bar, self.clean_unit, i)
            self.num_classes = c["num_classes"]
            u = {"clean": c["clean"], "robust": {}, "bounds": {},
                 "seconds": {"clean": c["seconds"], "gradients": c["gradient_seconds"]},
                 **{k: c[k] for k in ("grad_checked", "grad_zero", "grad_nonfinite")}}
            for name in self.names:
                a = self.unit(f"batch/{i}/{name}", bar, self.attack_unit, i, name, c["clean"])
                u["robust"][name], u["bounds"][name] = a["robust"], a["bounds"]
                u["seconds"][name] = a["seconds"]
            results.append(u)
            worst = worst_without(u["clean"], u["robust"], skip=None)
            seen, still = seen + len(worst), still + int(worst.sum())
            bar.set_postfix_str(f"robust {still / seen:.1%} of {seen}", refresh=False)
        return results

    def run_doubling(self, bar) -> dict[str, Tensor]:
        """Per example of the sanity subset, robust to PGD with doubled steps / restarts."""
        return {kind: torch.cat([self.unit(f"more-{kind}/{i}", bar, self.doubled_unit, i,
                                           kind)["robust"] for i in range(self.batches(self.m))])
                for kind in ("steps", "restarts")}

    def run_curve(self, bar, grid: list[float], clean_correct: int) -> list[dict]:
        """Accuracy on the sanity subset at each radius of ``grid``, up to the first 0."""
        points = []
        for k, e in enumerate(grid):
            if e == 0:  # no attack: the clean accuracy
                correct = clean_correct
                bar.update()
            else:
                correct = self.unit(f"curve/{k}", bar, self.curve_unit, e, k)["correct"]
            points.append({"eps": e, "accuracy": correct / self.m})
            if correct == 0:
                bar.total -= len(grid) - k - 1  # the rest of the grid is not needed
                bar.refresh()
                break
        return points

    def predict(self, x: Tensor, clean: bool = False) -> Tensor:
        with torch.no_grad():
            logits = model_logits(self.model, x, self.settings.precision)
        if logits.dim() != 2 or logits.shape[0] != len(x):
            raise ValueError(f"model must return logits [B, num_classes] = [{len(x)}, C], got "
                             f"{list(logits.shape)}")
        self.num_classes = logits.shape[1]
        # argmax of NaN logits is an arbitrary class, not a prediction; on clean images an
        # infinite logit already says the model is broken (an attack may push one there)
        bad = (~torch.isfinite(logits) if clean else torch.isnan(logits)).any(dim=1)
        if bool(bad.any()):
            what = "NaN or infinite" if clean else "NaN"
            raise ValueError(f"the model outputs {what} logits on {int(bad.sum())} of "
                             f"{len(x)} inputs ({'clean images' if clean else 'attacked'}): "
                             "an accuracy of it would mean nothing; is it a diverged model?")
        return logits.argmax(dim=1)

    def checked(self, name: str, x_adv: Tensor, x: Tensor) -> tuple[Tensor, dict]:
        """``x_adv`` verified to lie in the ball and the valid range: violations beyond fp32
        rounding are an error (the accuracy would be a lie); rounding-sized ones (possible
        only in an external attack's arithmetic) are projected away and counted."""
        if x_adv.shape != x.shape:
            raise AttackError(f"attack {name} returned shape {list(x_adv.shape)} for inputs "
                               f"{list(x.shape)}")
        v = sanity.bound_violation(x_adv, x, self.settings.eps)
        worst = float(v.max()) if len(v) else 0.0
        if worst > sanity.ROUNDING:
            raise AttackError(
                f"attack {name} returned inputs up to {worst:.3g} outside "
                f"[max(0, x - eps), min(1, x + eps)] (eps={self.settings.eps:g}): counting them "
                "would misstate robustness")
        projected = int((v > 0).sum())
        if projected:
            x_adv = sanity.project(x_adv, x, self.settings.eps)
        return x_adv, {"points": len(x), "max": worst, "projected": projected}

    def clean_unit(self, i: int) -> dict:
        """Batch i: which examples are classified correctly, and their input gradients."""
        xb, yb = self.data(i)
        t = _Timer(self.device)
        clean = self.predict(xb, clean=True) == yb
        out = {"clean": clean.cpu(), "num_classes": self.num_classes, "seconds": t.lap()}
        idx = clean.nonzero().squeeze(1)
        zero = nonfinite = 0
        if idx.numel():
            z, nf = sanity.input_gradient_flags(self.model, xb[idx], yb[idx],
                                                self.settings.precision, self.settings.loss)
            zero, nonfinite = int(z.sum()), int(nf.sum())
        out.update(grad_checked=int(idx.numel()), grad_zero=zero, grad_nonfinite=nonfinite,
                   gradient_seconds=t.lap())
        return out

    def attack_unit(self, i: int, name: str, clean: Tensor) -> dict:
        """Attack ``name`` on the correctly classified examples of batch i."""
        xb, yb = self.data(i)
        t = _Timer(self.device)
        robust = torch.zeros_like(clean)
        bounds = {"points": 0, "max": 0.0, "projected": 0}
        idx = clean.nonzero().squeeze(1)
        if idx.numel():
            idx_dev = idx.to(xb.device)
            x, y = xb[idx_dev], yb[idx_dev]
            x_adv = run_attack(name, self.model, x, y, self.settings,
                               seed=unit_seed(self.seed, f"{name}/{i}"),
                               num_classes=self.num_classes)
            x_adv, bounds = self.checked(name, x_adv, x)
            robust[idx] = (self.predict(x_adv) == y).cpu()
        return {"robust": robust, "bounds": bounds, "seconds": t.lap()}

    def doubled_unit(self, i: int, kind: str) -> dict:
        """PGD with twice the steps or twice the restarts on batch i of the sanity subset,
        from the same seed as the evaluation's PGD (the doubled restarts extend its starts)."""
        xb, yb = self.data(i, self.m)
        s = self.settings
        steps = 2 * s.steps if kind == "steps" else s.steps
        restarts = 2 * s.restarts if kind == "restarts" else s.restarts
        t = _Timer(self.device)
        clean = self.predict(xb, clean=True) == yb
        idx = clean.nonzero().squeeze(1)
        robust = torch.zeros_like(clean)
        if idx.numel():
            gen = torch.Generator(self.device).manual_seed(unit_seed(self.seed, f"pgd/{i}"))
            # The same alpha as the evaluation's PGD: only the budget changes.
            x_adv = pgd(self.model, xb[idx], yb[idx], eps=s.eps, alpha=s.pgd_alpha, steps=steps,
                        restarts=restarts, loss=s.loss, early_stop=True, precision=s.precision,
                        max_batch=s.max_batch, generator=gen)
            x_adv, _ = self.checked("pgd", x_adv, xb[idx])
            robust[idx] = self.predict(x_adv) == yb[idx]
        return {"robust": robust.cpu(), "seconds": t.lap()}

    def curve_unit(self, eps: float, k: int) -> dict:
        """Examples of the sanity subset PGD cannot fool at radius ``eps``."""
        s, t, correct = self.settings, _Timer(self.device), 0
        for i in range(self.batches(self.m)):
            xb, yb = self.data(i, self.m)
            idx = (self.predict(xb, clean=True) == yb).nonzero().squeeze(1)
            if not idx.numel():
                continue
            gen = torch.Generator(self.device).manual_seed(unit_seed(self.seed, f"curve/{k}/{i}"))
            x_adv = pgd(self.model, xb[idx], yb[idx], eps=eps, alpha=2.5 * eps / self.curve_steps,
                        steps=self.curve_steps, loss=s.loss, precision=s.precision,
                        max_batch=s.max_batch, generator=gen)
            correct += int((self.predict(x_adv) == yb[idx]).sum())
        return {"eps": eps, "correct": correct, "seconds": t.lap()}


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # GPU work is asynchronous: time it finished
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.start = now - self.start, now
        return elapsed


# --------------------------------------------------------------------------- checks, metadata


def checked_data(model, x, y) -> tuple[Tensor, Tensor]:
    """(x, y) as an evaluation uses them (float, long), after checking them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a float tensor [N, C, H, W], got {got}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor of labels [N], got "
                        f"{type(y).__name__ if not isinstance(y, Tensor) else y.dtype}")
    if y.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"y must have shape [N] = [{len(x)}] with N >= 1, got {list(y.shape)}")
    lo, hi = x.min().item(), x.max().item()
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ValueError(f"x must lie in [0, 1] (models normalise inside), got values in "
                         f"[{lo:g}, {hi:g}]")
    return x.float(), y.long()


def versions() -> dict:
    def installed(dist: str):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"fastadv": __version__, "torch": str(torch.__version__),
            "torchattacks": installed("torchattacks"), "python": platform.python_version()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return (f"{device} ({platform.processor() or platform.machine()}, {threads} "
            f"thread{'s' if threads != 1 else ''})")
