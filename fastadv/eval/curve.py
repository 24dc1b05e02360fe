"""Accuracy against the attack radius ε: the grid of radii, and the plot.

The grid starts at 0 (clean accuracy), goes up linearly in steps of ε/4 to 2ε (where the
interesting part is), then doubles (4ε, 8ε, ...) and ends at 1 (in [0, 1] pixel units an
l-inf radius of 1 reaches every image). The evaluation stops at the first radius where
accuracy is 0, so a robust CIFAR-10 model at ε = 8/255 needs at most 13 points.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from .._io import write_atomic
from .report import fmt_eps

LINEAR_STEPS = 8  # ε/4 .. 2ε
FALLBACK_BASE = 8 / 255  # the grid's unit when the evaluation's ε is 0


def eps_grid(eps: float) -> Iterator[float]:
    """0, ε/4, ..., 2ε, 4ε, 8ε, ... (each < 1), then 1.0."""
    base = eps if eps > 0 else FALLBACK_BASE
    yield 0.0
    # 12 significant digits: 0.15, not 0.15000000000000002 (well below any attack's effect)
    points = [float(f"{base * k / 4:.12g}") for k in range(1, LINEAR_STEPS + 1)]
    r = 2 * base
    while True:
        r *= 2
        if r >= 1.0:
            break
        points.append(float(f"{r:.12g}"))
    for p in points:
        if p >= 1.0:
            break
        yield p
    yield 1.0


def plot(points: list[dict], path: str, *, eps: float, robust_acc: float | None = None,
         title: str = "", label: str = "PGD accuracy") -> None:
    """A PNG of accuracy (%) against ε, the evaluation's ε marked (and its worst-case robust
    accuracy, when given); written atomically."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from .attacks import INSTALL_HINT, MissingDependency

        raise MissingDependency(f"--plot needs matplotlib, which is not installed; install the "
                                f"evaluation extra: {INSTALL_HINT}") from None
    # A bare Figure, not pyplot: it needs no display and leaves the caller's backend alone.
    fig = Figure(figsize=(5.5, 3.6), dpi=120)
    ax = fig.subplots()
    xs = [p["eps"] for p in points]
    ax.plot(xs, [100 * p["accuracy"] for p in points], "o-", label=label)
    ax.axvline(eps, color="gray", ls="--", lw=1, label=f"eps = {fmt_eps(eps)}")
    if robust_acc is not None:
        ax.plot([eps], [100 * robust_acc], "r*", ms=10, label="worst case, all attacks")
    ax.set_xlabel("l-inf radius eps")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())
