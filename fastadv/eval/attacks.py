"""The attacks an evaluation runs, by name: each maps a batch ``(x [b, C, H, W] in [0, 1],
y [b])`` to ``x_adv`` of the same shape inside ``{x' : ||x' - x||_∞ ≤ ε} ∩ [0, 1]``.

- ``fgsm``: fastadv's one-step FGSM, ``x + ε·sign(∇_x L)`` (the weak baseline the sanity
  report compares against).
- ``pgd``: fastadv's PGD (Madry et al.), ``steps`` steps of ``α = 2.5ε/steps`` from random
  starts, ``restarts`` restarts, each next restart only on the examples not yet fooled.
- ``autoattack``: AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein
  2020), from torchattacks: an independent implementation.
- ``square``: the Square attack (Andriushchenko et al. 2020), gradient-free random search on
  the margin, from torchattacks: it needs no gradient, so gradient masking cannot stop it.

torchattacks is an optional dependency (``pip install "fastadv[eval]"``), imported only when
one of its attacks runs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attacks.losses import LOSSES
from ..attacks import fgsm, pgd
from ..attacks.core import PRECISIONS

ATTACKS = ("fgsm", "pgd", "autoattack", "square")
EXTERNAL = ("autoattack", "square")  # from torchattacks
GRADIENT_FREE = ("square",)
INSTALL_HINT = ('pip install "fastadv[eval]" (from a source checkout: pip install -e ".[eval]"), '
                'or just pip install torchattacks matplotlib')


class MissingDependency(ImportError):
    """An optional dependency of an attack or the plot is not installed."""


class AttackError(RuntimeError):
    """An attack returned something an honest evaluation cannot count (a point outside the
    ε-ball or the valid range, a wrong shape)."""


@dataclass(frozen=True)
class AttackSettings:
    """What every attack of one evaluation shares. ``alpha=None``: PGD's ``2.5 ε / steps``
    (Madry et al.: enough to cross the ball and come back)."""

    eps: float
    steps: int = 50
    restarts: int = 10
    alpha: float | None = None
    loss: str = "ce"
    square_queries: int = 5000
    precision: str = "fp32"
    max_batch: int | None = None

    @property
    def pgd_alpha(self) -> float:
        return 2.5 * self.eps / self.steps if self.alpha is None else self.alpha

    def describe(self, name: str) -> dict:
        """The settings of attack ``name``, as recorded in the report."""
        if name == "fgsm":
            return {"steps": 1, "alpha": self.eps, "random_start": False, "loss": "ce"}
        if name == "pgd":
            return {"steps": self.steps, "restarts": self.restarts, "alpha": self.pgd_alpha,
                    "loss": self.loss, "random_start": True, "early_stop": True}
        if name == "autoattack":
            return {"version": "standard", "norm": "Linf",
                    "components": "apgd-ce, apgd-t, fab-t, square(5000)",
                    "implementation": "torchattacks"}
        if name == "square":
            return {"queries": self.square_queries, "restarts": 1, "p_init": 0.8,
                    "loss": "margin", "implementation": "torchattacks"}
        raise ValueError(f"unknown attack {name!r}")


def check_settings(s: AttackSettings) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(message)

    need(isinstance(s.eps, (int, float)) and 0.0 <= s.eps <= 1.0,
         f"eps must lie in [0, 1] (inputs are in [0, 1]), got {s.eps!r}")
    for name, value in (("steps", s.steps), ("restarts", s.restarts),
                        ("square_queries", s.square_queries)):
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{name} must be an int >= 1, got {value!r}")
    need(s.alpha is None or (isinstance(s.alpha, (int, float)) and 0 < s.alpha <= 1),
         f"alpha must be None (2.5 eps / steps) or lie in (0, 1], got {s.alpha!r}")
    need(s.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {s.loss!r}")
    need(s.precision in PRECISIONS,
         f"precision must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")


def check_attacks(names) -> tuple[str, ...]:
    """The attack names, validated (known, no repeats, at least one)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    if not names:
        raise ValueError(f"attacks must name at least one of {', '.join(ATTACKS)}")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(ATTACKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"attacks: each attack once, got {', '.join(names)}")
    return names


def torchattacks():
    """The torchattacks module, or a MissingDependency that says how to install it."""
    try:
        import torchattacks as ta
    except ImportError as exc:
        raise MissingDependency(
            f"the attacks {' and '.join(EXTERNAL)} come from torchattacks, which is not "
            f"installed ({exc}); install the evaluation extra: {INSTALL_HINT} "
            "(or run only fastadv's own attacks: --attacks fgsm,pgd)") from None
    return ta


def unit_seed(seed: int, key: str) -> int:
    """A seed for one unit of work (an attack on one batch), from the run's seed and the
    unit's name: resuming recomputes a unit with exactly the randomness it had."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31 - 1)


class _Autocast(nn.Module):
    """The model under bf16 autocast, returning fp32 logits: so torchattacks' attacks run at
    the evaluation's precision too."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


def run_attack(name: str, model: nn.Module, x: Tensor, y: Tensor, settings: AttackSettings, *,
               seed: int, num_classes: int) -> Tensor:
    """``x_adv`` of attack ``name`` on the batch; deterministic given ``seed`` (on the CPU;
    cuDNN may make GPU runs differ in the last bits)."""
    s = settings
    if name == "fgsm":
        return fgsm(model, x, y, eps=s.eps, precision=s.precision, max_batch=s.max_batch)
    if name == "pgd":
        gen = torch.Generator(x.device).manual_seed(seed)
        return pgd(model, x, y, eps=s.eps, alpha=s.pgd_alpha, steps=s.steps,
                   restarts=s.restarts, loss=s.loss, early_stop=True, precision=s.precision,
                   max_batch=s.max_batch, generator=gen)
    if name not in EXTERNAL:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    ta = torchattacks()
    dtype = PRECISIONS[s.precision]
    target = model if dtype is None else _Autocast(model, dtype)
    if name == "autoattack":
        attack = ta.AutoAttack(target, norm="Linf", eps=s.eps, version="standard",
                               n_classes=num_classes, seed=seed)
    else:
        attack = ta.Square(target, norm="Linf", eps=s.eps, n_queries=s.square_queries,
                           n_restarts=1, loss="margin", seed=seed)
    # torchattacks seeds torch's global generators; keep the caller's streams untouched.
    devices = ([x.device.index if x.device.index is not None else torch.cuda.current_device()]
               if x.device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        return attack(x, y).detach()
