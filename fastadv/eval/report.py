"""The evaluation report: a dataclass that round-trips through JSON (RobustBench-style fields:
clean and robust accuracy, ε, threat model, examples, attack settings, versions, seconds),
its printed tables, written atomically.

Per-example results are kept as strings of ``0``/``1``, one character per example (``1`` =
classified correctly: clean, or still robust after that attack), so a 10 000-example
report stays small and readable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .._io import write_json

FORMAT = "fastadv-eval/1"
STATUSES = ("pass", "warn", "skipped")


@dataclass
class Check:
    """One sanity check: ``status`` is ``pass``, ``warn`` or ``skipped``; ``values`` holds the
    numbers it was decided on; ``message`` says in one line what they mean."""

    name: str
    status: str
    values: dict
    message: str

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")


@dataclass
class AttackResult:
    """One attack run on every example: its robust accuracy (fraction of all ``n_examples``
    still classified correctly; wrong clean predictions count as broken), its settings and
    the seconds it took (summed over batches)."""

    robust_acc: float
    settings: dict
    seconds: float


@dataclass
class EvalReport:
    """What ``fastadv.evaluate`` measured.

    ``robust_acc`` is the per-example worst case over ``attacks``: an example counts as
    robust only if it is classified correctly clean and after every attack.
    ``curve`` (when computed) is ``{"attack", "n_examples", "points": [{"eps", "accuracy"}]}``.
    """

    clean_acc: float
    robust_acc: float
    attacks: dict[str, AttackResult]
    eps: float
    n_examples: int
    settings: dict
    sanity: list[Check]
    curve: dict | None
    per_example: dict[str, str]
    versions: dict
    device: str
    seconds: dict
    threat_model: str = "Linf"
    norm: str = "Linf"
    dataset: str | None = None
    split: str | None = None
    checkpoint: str | None = None
    model: str | None = None
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ queries

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.sanity if c.status == "warn"]

    @property
    def sanity_passed(self) -> bool:
        """No check warned (skipped checks do not count against it)."""
        return not self.warnings

    def check(self, name: str) -> Check:
        for c in self.sanity:
            if c.name == name:
                return c
        raise KeyError(f"no sanity check named {name!r}; have {[c.name for c in self.sanity]}")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sanity"] = {"passed": self.sanity_passed, "checks": d["sanity"]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalReport":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a fastadv evaluation report (format {d.get('format')!r}, "
                             f"want {FORMAT!r})")
        d = dict(d)
        d["attacks"] = {k: AttackResult(**v) for k, v in d["attacks"].items()}
        d["sanity"] = [Check(**c) for c in d["sanity"]["checks"]]
        return cls(**d)

    def save_json(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str) -> "EvalReport":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    # ------------------------------------------------------------------ tables

    def table(self) -> str:
        """The accuracy table, the sanity table and the curve, as Markdown."""
        where = " ".join(str(p) for p in (self.checkpoint, "on", self.dataset, self.split)
                         if p is not None) if self.dataset else (self.checkpoint or "model")
        lines = [f"{where}: {self.n_examples} examples, {self.threat_model} eps = "
                 f"{fmt_eps(self.eps)}, {self.settings.get('precision', 'fp32')}, {self.device}",
                 "",
                 "| attack | robust accuracy | settings | seconds |",
                 "|---|---:|---|---:|",
                 f"| clean | {self.clean_acc:.2%} | | {self.seconds.get('clean', 0.0):.1f} |"]
        for name, r in self.attacks.items():
            lines.append(f"| {name} | {r.robust_acc:.2%} | {describe(r.settings)} | "
                         f"{r.seconds:.1f} |")
        lines.append(f"| **worst case** | **{self.robust_acc:.2%}** | per example, over "
                     f"{', '.join(self.attacks)} | {self.seconds.get('total', 0.0):.1f} total |")
        lines += ["", "| sanity check | status | numbers | meaning |", "|---|---|---|---|"]
        for c in self.sanity:
            status = c.status.upper() if c.status == "warn" else c.status
            lines.append(f"| {c.name} | {status} | {describe(c.values)} | {c.message} |")
        verdict = ("all sanity checks pass" if self.sanity_passed else
                   f"{len(self.warnings)} sanity check(s) WARN: the robust accuracy above may "
                   "overstate robustness (gradient masking or too weak an attack)")
        lines += ["", verdict]
        if self.curve:
            pts = ", ".join(f"{fmt_eps(p['eps'])}: {p['accuracy']:.1%}"
                            for p in self.curve["points"])
            lines += [f"accuracy vs eps ({self.curve['attack']}, first "
                      f"{self.curve['n_examples']} examples): {pts}"]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def fmt_eps(eps: float) -> str:
    """ε as k/255 when it is one (to 1e-6), else as a decimal."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6 and not abs(eps * 100 - round(eps * 100)) < 1e-9:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


def describe(values: dict) -> str:
    parts = []
    for k, v in values.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, tuple)):
            v = "[" + ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v) + "]"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def bits(flags) -> str:
    """A bool sequence/tensor as a ``0``/``1`` string."""
    return "".join("1" if bool(f) else "0" for f in (flags.tolist() if hasattr(flags, "tolist")
                                                       else flags))
