"""Command line entry: parse, fill defaults (or the saved run's settings on --resume), check,
train. Bad input exits non-zero with one clear line, before anything is written."""

from __future__ import annotations

import json
import os
import sys

from ..checkpoint import load_checkpoint
from ..data import DataFileError, DatasetNotFoundError, DownloadError
from .config import (TrainConfig, TrainConfigError, check, explicit_flags,
                     killed_before_first_checkpoint, parser, resolve)
from .loop import train


def config_from_args(argv=None) -> TrainConfig:
    p = parser()
    args = p.parse_args(argv)
    try:
        if not args.resume:
            return resolve(args)
        if args.out is None:
            raise TrainConfigError("--resume needs --out, the run directory to continue")
        last, config = os.path.join(args.out, "last.pt"), os.path.join(args.out, "config.json")
        if killed_before_first_checkpoint(args.out):
            with open(config) as f:  # killed before its first checkpoint
                saved = json.load(f)
        else:
            saved = load_checkpoint(last)["config"]
        # The saved run's settings, with the flags given now on top (the trainer refuses
        # changes that would alter the result).
        # --strict applies to this invocation only: a run --strict stopped, resumed without
        # it, trains on past the stall.
        values = {**saved, **{k: getattr(args, k) for k in explicit_flags(argv, p)},
                  "out": args.out, "resume": True, "strict": args.strict}
        cfg = TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
        check(cfg)
        return cfg
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))


def main(argv=None) -> int:
    """Exit status: 0 done; 2 bad input; 3 with --strict when the training stalled."""
    cfg = config_from_args(argv)
    try:
        summary = train(cfg)
    except (TrainConfigError, DataFileError, DatasetNotFoundError, DownloadError) as exc:
        # Bad input only: any other error is a bug, and keeps its traceback.
        print(f"python -m fastadv.train: error: {exc}", file=sys.stderr)
        return 2
    return 3 if cfg.strict and summary.get("stalled") else 0
