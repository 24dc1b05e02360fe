"""What the command lines (train, eval, experiments) share: reading numbers written as
fractions, the range of a seed, and one line for a failed write."""

from __future__ import annotations

import argparse
from fractions import Fraction

from ._io import WriteError


# Every seed a run derives (seed * 1_000_003 + epoch * 1009 + rank, ...) stays inside what
# torch.manual_seed accepts (< 2**64).
MAX_SEED = 2**44 - 1
# No count a command takes (epochs, steps, restarts, batch size, ...) is anywhere near this;
# a larger one is a typo, refused before it overflows a seed or a tensor size.
MAX_COUNT = 2**31 - 1


def number(text: str) -> float:
    """A float, also written as a fraction: ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {text!r}")
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too large for a float") from None


AUTO = "auto"  # --resume auto: continue the run or evaluation there is, else start it


def resume_arg(text: str) -> str:
    """--resume's optional value (train and eval): only ``auto``."""
    if text != AUTO:
        raise argparse.ArgumentTypeError(f"the only value --resume takes is auto, got {text!r}")
    return text


def write_failure(exc: OSError) -> str:
    """One line for an OSError: 'cannot write FILE: why' (errno text) for a failed write,
    'FILE: why' for any other."""
    if isinstance(exc, WriteError):
        return str(exc)
    return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
