"""What the command lines (train, eval, experiments) share: reading numbers written as
fractions, and one line for a failed write."""

from __future__ import annotations

import argparse
from fractions import Fraction

from ._io import WriteError


def number(text: str) -> float:
    """A float, also written as a fraction: ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {text!r}")


def write_failure(exc: OSError) -> str:
    """One line for an OSError: 'cannot write FILE: why' (errno text) for a failed write,
    'FILE: why' for any other."""
    if isinstance(exc, WriteError):
        return str(exc)
    return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
