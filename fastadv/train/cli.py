"""Command line entry: parse, fill defaults (or the saved run's settings on --resume), check,
train. Bad input exits non-zero with one clear line, before anything is written."""

from __future__ import annotations

import sys

from ..cli_common import write_failure
from ..checkpoint import checkpoint_state
from ..data import DataFileError, DatasetNotFoundError, DownloadError
from ..data.folder import FolderError
from ..model_specs import check_trusted, is_model_spec
from .config import (SETTING, TrainConfig, TrainConfigError, check, check_resume_or_overwrite,
                     explicit_flags, parser, resolve)
from .divergence import TrainingDiverged
from .elastic import PEER_LOST_EXIT, STOPPED_EXIT, PeerLost, RunStopped
from .loop import train
from .rundir import RunDir, saved_settings


def cli_parser():
    p = parser()
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failed write (disk full, permissions) "
                        "instead of one line")
    p.add_argument("--trust-model-code", action="store_true",
                   help="--resume: build the saved run's package.module:factory model "
                        "(imports and runs that code: only for run folders whose author you "
                        "trust; passing the same --model again does the same)")
    return p


def config_from_args(argv=None) -> TrainConfig:
    p = cli_parser()
    args = p.parse_args(argv)
    trust_code = args.trust_model_code
    del args.debug, args.trust_model_code  # how this invocation behaves, not run settings
    try:
        typed = explicit_flags(argv, p) & set(SETTING)
        if args.resume == "auto":  # the command is the run: resumed if --out holds it
            check_resume_or_overwrite(True, args.overwrite)
            args.resume = False
            return resolve(args, typed)
        if not args.resume:
            return resolve(args, typed)
        check_resume_or_overwrite(args.resume, args.overwrite)
        if args.out is None:
            raise TrainConfigError("--resume needs --out, the run directory to continue")
        saved = saved_settings(args.out)
        if saved is None:
            return resolve(args, typed)  # killed before it wrote its settings: these are the run's
        # The saved run's settings, with the flags given now on top (the trainer refuses
        # changes that would alter the result).
        # --strict applies to this invocation only: a run --strict stopped, resumed without
        # it, trains on past the stall.
        if not isinstance(saved, dict):
            raise TrainConfigError(f"--resume: the saved settings in {args.out} are a "
                                   f"{type(saved).__name__}, not a mapping: the run's files "
                                   "were edited or are damaged")
        values = {**saved, **{k: getattr(args, k) for k in typed},
                  "out": args.out, "resume": True, "strict": args.strict,
                  "overwrite": args.overwrite}
        cfg = TrainConfig(**{k: v for k, v in values.items() if k in SETTING})
        check(cfg)
        if "model" not in typed and is_model_spec(cfg.model):
            # The model spec comes from a file in --out, which anyone may have written.
            check_trusted(cfg.model, f"--resume: the run in {args.out}",
                          trust_code=trust_code)
        return cfg
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))


def main(argv=None) -> int:
    """Exit status: 0 done; 1 a write failed (disk full, permissions); 2 bad input (a
    second run on the same --out included) or a diverged training (a NaN loss); 3 with
    --strict when the training stalled, diverged or overfit catastrophically; 4 another
    rank was lost (torchrun);
    143 stopped by SIGTERM at a batch boundary, last.pt written (non-zero, so that torchrun
    restarts the workers rather than count the job as done)."""
    cfg = config_from_args(argv)
    flags = cli_parser().parse_known_args(argv)[0]
    debug = flags.debug
    try:
        summary = train(cfg, auto_resume=flags.resume == "auto", pass_on_sigterm=False)
    except RunStopped as exc:
        print(f"python -m fastadv.train: {exc}", file=sys.stderr)
        return STOPPED_EXIT
    except PeerLost as exc:
        if debug and exc.__context__ is not None:
            raise exc.__context__  # the transport's own error
        print(f"python -m fastadv.train: error: {exc}", file=sys.stderr)
        return PEER_LOST_EXIT
    except TrainingDiverged as exc:
        print(f"python -m fastadv.train: error: {exc}", file=sys.stderr)
        return 3 if cfg.strict else 2
    except (TrainConfigError, DataFileError, DatasetNotFoundError, DownloadError,
            FolderError) as exc:
        # Bad input only: any other error is a bug, and keeps its traceback.
        print(f"python -m fastadv.train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug:
            raise
        last = RunDir(cfg.out).last
        state = checkpoint_state(last)
        kept = ("no checkpoint was written yet" if state == "not written yet" else
                f"{last} is {state}: nothing half-written replaced it (--resume continues "
                "from it once the cause is fixed)")
        print(f"python -m fastadv.train: error: {write_failure(exc)}; {kept}; --debug shows "
              "the traceback", file=sys.stderr)
        return 1
    return 3 if cfg.strict and (summary.get("stalled") or summary.get("overfit")) else 0
