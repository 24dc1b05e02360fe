"""Command line entry: parse, fill defaults (or the saved run's settings on --resume), check,
train. Bad input exits non-zero with one clear line, before anything is written."""

from __future__ import annotations

import json
import os
import sys

from .._io import WriteError
from .._rundir import LOCK_NAME, DirectoryBusy, RunLock, checkpoint_state, launch_rank
from ..checkpoint import load_checkpoint
from ..data import DataFileError, DatasetNotFoundError, DownloadError
from ..data.folder import FolderError
from .config import (RESUMABLE, TrainConfig, TrainConfigError, check, explicit_flags,
                     killed_before_first_checkpoint, parser, resolve)
from .loop import train


def cli_parser():
    p = parser()
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failed write (disk full, permissions) "
                        "instead of one line")
    return p


def config_from_args(argv=None) -> TrainConfig:
    p = cli_parser()
    args = p.parse_args(argv)
    del args.debug  # how errors are shown, not a setting of the run
    try:
        if not args.resume:
            return resolve(args)
        if args.out is None:
            raise TrainConfigError("--resume needs --out, the run directory to continue")
        last, config = os.path.join(args.out, "last.pt"), os.path.join(args.out, "config.json")
        if launch_rank() == 0 and os.path.isdir(args.out):
            # Another run's files are not read while it writes them (train() takes the lock
            # for the run's lifetime; this only reports a busy --out before reading it).
            probe = RunLock(os.path.join(args.out, LOCK_NAME), f"--out {args.out}")
            try:
                probe.acquire()
            except DirectoryBusy as exc:
                raise TrainConfigError(str(exc)) from None
            probe.release()
        if killed_before_first_checkpoint(args.out) and not os.path.exists(config):
            return resolve(args)  # killed before it wrote its settings: these flags are the run's
        if killed_before_first_checkpoint(args.out):
            try:  # killed before its first checkpoint
                with open(config) as f:
                    saved = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TrainConfigError(f"--resume: {config} is not valid JSON ({exc}); "
                                       "restore it or start a new --out") from None
        else:
            try:
                saved = load_checkpoint(last)["config"]
            except ValueError as exc:
                raise TrainConfigError(f"--resume: {exc}. {_damaged_last_advice(args.out)}") \
                    from None
            _check_config_json(config, saved)
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


def _damaged_last_advice(out: str) -> str:
    best = os.path.join(out, "best.pt")
    state = checkpoint_state(best)
    if state.startswith("intact"):
        return (f"{best} is {state}: copy it over last.pt to resume from there (the later "
                "epochs are redone, to the same result), or start over in a new --out")
    return "No intact best.pt to fall back on: start over in a new --out"


def _check_config_json(path: str, saved: dict) -> None:
    """config.json records the settings a run started with; last.pt's are the ones a resume
    uses. A hand edit would be silently ignored: refuse it instead."""
    try:
        with open(path) as f:
            on_disk = json.load(f)
    except FileNotFoundError:
        return  # a record only: nothing to disagree with
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"--resume: {path} is not valid JSON ({exc}); restore it (the "
                               "run's settings are in last.pt) or start a new --out") from None
    if not isinstance(on_disk, dict):
        raise TrainConfigError(f"--resume: {path} is not a settings object; restore it (the "
                               "run's settings are in last.pt) or start a new --out")
    edited = sorted(k for k in saved if k not in RESUMABLE and k in on_disk
                    and json.loads(json.dumps(saved[k])) != on_disk[k])
    if edited:
        diffs = ", ".join(f"{k}: {saved[k]!r} in last.pt, {on_disk[k]!r} in config.json"
                          for k in edited)
        raise TrainConfigError(
            f"--resume: {path} was changed after the run started ({diffs}); a resume takes "
            "its settings from last.pt: restore config.json, or start a new --out with the "
            "settings you want")


def main(argv=None) -> int:
    """Exit status: 0 done; 1 a write failed (disk full, permissions); 2 bad input (a
    second run on the same --out included); 3 with --strict when the training stalled."""
    cfg = config_from_args(argv)
    debug = cli_parser().parse_known_args(argv)[0].debug
    try:
        summary = train(cfg)
    except (TrainConfigError, DataFileError, DatasetNotFoundError, DownloadError,
            FolderError) as exc:
        # Bad input only: any other error is a bug, and keeps its traceback.
        print(f"python -m fastadv.train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug:
            raise
        last = os.path.join(cfg.out, "last.pt")
        state = checkpoint_state(last)
        kept = ("no checkpoint was written yet" if state == "not written yet" else
                f"{last} is {state}: nothing half-written replaced it (--resume continues "
                "from it once the cause is fixed)")
        print(f"python -m fastadv.train: error: {write_failure(exc)}; {kept}; --debug shows "
              "the traceback", file=sys.stderr)
        return 1
    return 3 if cfg.strict and summary.get("stalled") else 0


def write_failure(exc: OSError) -> str:
    """One line for an OSError: 'cannot write FILE: why' (errno text) for a failed write,
    'FILE: why' for any other."""
    if isinstance(exc, WriteError):
        return str(exc)
    return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
