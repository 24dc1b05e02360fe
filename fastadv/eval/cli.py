"""``python -m fastadv.eval``: evaluate a ``python -m fastadv.train`` checkpoint on its
dataset's test split. Unset flags come from the checkpoint (dataset, ε, seed). Bad input
exits non-zero with one clear line naming the flag, before anything is written.

Schedulers and torchrun run the same command again after a kill: ``--resume auto`` continues
the partial evaluation, or finds the report already complete. Under torchrun the evaluation
runs in one process (``--nproc-per-node 1``); a restarted worker behaves as ``--resume auto``
by itself, and one given ``--overwrite`` continues the partial file its own job wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from ..devices import resolve_device
from .._outdir import (DirectoryBusy, RunLock, leftovers_line, remove_leftovers, restart_count,
                       run_id)
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..data import (DATASETS, DatasetNotFoundError, DownloadError, is_dataset, load_run_dataset,
                    normalize_dataset)
from ..data import folder as folder_data
from ..data.folder_sources import folder_sources
from ..cli_common import AUTO, MAX_COUNT, MAX_SEED, number, resume_arg, write_failure
from .attacks import (ATTACKS, EXTERNAL, INSTALL_HINT, AttackError, AttackSettings,
                      MissingDependency, check_attacks, torchattacks)
from .curve import plot
from .evaluation import DEFAULT_ATTACKS, checked_data, evaluate, run_record
from .report import EvalReport, fmt_eps
from .store import recorded_run_id

PROG = "python -m fastadv.eval"
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Robust accuracy of a fastadv checkpoint on its dataset's test split: the "
                    "per-example worst case over the attacks, a sanity report that flags "
                    "evaluations too weak to trust (gradient masking), and accuracy vs eps.",
        epilog="exit status: 0 done, 2 bad input, 3 with --strict when a sanity check warns; "
               "1 when an attack returns points outside the eps-ball or a write fails (disk "
               "full, permissions). Under torchrun: one process (--nproc-per-node 1); a "
               "restarted worker continues as with --resume auto")
    a = p.add_argument
    a("--checkpoint", required=True, help="a checkpoint written by python -m fastadv.train "
                                          "(RUN/best.pt or RUN/last.pt)")
    a("--dataset", help=f"{', '.join(DATASETS)}, idx:PATH or folder:PATH (default: the one "
                        "the checkpoint was trained on; a folder's test split is the one the "
                        "training run used: test/, else val/, else its held-out part)")
    a("--data-dir", help="where the dataset files are (default: the training run's, else "
                         "$FASTADV_DATA or ~/.cache/fastadv/data)")
    a("--download", action="store_true", help="fetch missing dataset files (needs a network)")
    a("--eps", type=number, help="l-inf radius in [0, 1] pixel units, fractions like 8/255 "
                                 "accepted (default: the training eps)")
    a("--attacks", default=",".join(DEFAULT_ATTACKS),
      help=f"comma-separated, from {', '.join(ATTACKS)} (default: %(default)s); "
           f"{' and '.join(EXTERNAL)} need pip install \"fastadv[eval]\"")
    a("--steps", type=int, default=50, help="PGD steps (default: %(default)s)")
    a("--restarts", type=int, default=10,
      help="PGD random restarts; each next one only on the examples not yet fooled "
           "(default: %(default)s)")
    a("--alpha", type=number, help="PGD step size (default: 2.5 eps / steps)")
    a("--loss", choices=("ce", "cw", "dlr"), default="ce",
      help="PGD's objective: cross-entropy, CW margin or DLR (default: %(default)s)")
    a("--square-queries", type=int, default=5000,
      help="Square attack queries per example (default: %(default)s)")
    a("--n-examples", type=int, help="evaluate the first N test examples (default: all)")
    a("--batch-size", type=int, default=256,
      help="examples per batch; a batch is the unit --resume picks up from (default: %(default)s)")
    a("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    a("--seed", type=int, help="seed of all attack randomness (default: the training seed)")
    a("--precision", choices=("fp32", "bf16"), default="fp32",
      help="bf16: the model under bf16 autocast, inputs stay fp32 (default: %(default)s)")
    a("--json", metavar="OUT.json",
      help="write the report there (atomically); completed batches go to OUT.json.partial "
           "meanwhile, so --resume can continue after a kill")
    a("--plot", metavar="OUT.png", help="plot accuracy vs eps there (needs matplotlib)")
    a("--resume", nargs="?", const=True, default=False, type=resume_arg, metavar=AUTO,
      help="continue the evaluation kept in OUT.json.partial (same flags required; starts "
           "afresh when there is none); --resume auto also accepts an OUT.json that already "
           "holds this very evaluation, finished: it says so and exits, redoing nothing (for a "
           "scheduler that reruns the same command; any other existing OUT.json is refused, "
           "never replaced). Under torchrun, a restarted worker behaves as --resume auto by "
           "itself")
    a("--overwrite", action="store_true",
      help="replace an existing OUT.json/OUT.png, or discard an unfinished evaluation's "
           "OUT.json.partial (without it, they are never overwritten); a torchrun restart "
           "continues the partial its own job wrote instead")
    a("--no-sanity", dest="sanity", action="store_false",
      help="skip the extra sanity runs (PGD with doubled steps and doubled restarts)")
    a("--sanity-examples", type=int, default=500,
      help="the first N examples the sanity runs and the curve use (default: %(default)s)")
    a("--no-curve", dest="curve", action="store_false", help="skip the accuracy-vs-eps curve")
    a("--curve-steps", type=int, default=20,
      help="PGD steps per point of the curve, one restart (default: %(default)s)")
    a("--strict", action="store_true", help="exit with status 3 when a sanity check warns")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a("--trust-model-code", action="store_true",
      help="build the checkpoint's package.module:factory model (imports and runs that code: "
           "only for checkpoints whose author you trust; built-in, torchvision: and timm: "
           "models need no trust)")
    a("--debug", action="store_true", help="show the traceback of a failed write (disk full, "
                                           "permissions) instead of one line")
    return p


def one_process_refusal() -> str | None:
    """Why this process must not run (torchrun started several), or None. The evaluation is
    one process: ranks would all write the same OUT.json.partial."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        return (f"fastadv.eval runs in one process (WORLD_SIZE is {world}): torchrun "
                "--nproc-per-node 1 ... (restarts still apply)")
    return None


def follow_torchrun_restart(args: argparse.Namespace) -> None:
    """A worker torchrun restarted runs the same command again: with neither --resume nor
    --overwrite it continues the attempt before (its partial file, or its finished report),
    as --resume auto does, where a plain start would refuse the files that attempt left."""
    if restart_count() > 0 and args.json and not args.resume and not args.overwrite:
        args.resume = AUTO
        print(f"torchrun restart {restart_count()}: continuing as with --resume auto",
              file=sys.stderr)


def partial_path(args: argparse.Namespace) -> str | None:
    return args.json + ".partial" if args.json else None


def report_to_compare(args: argparse.Namespace) -> bool:
    """--resume auto finds OUT.json and no unfinished evaluation: the report may be this very
    evaluation, complete (a kill after it was written); :func:`finished_report` decides, once
    :func:`prepare` knows what this command evaluates."""
    return (args.resume == AUTO and not args.overwrite and args.json is not None
            and os.path.lexists(args.json) and not os.path.exists(partial_path(args)))


def check_outputs(args: argparse.Namespace) -> None:
    """The overwrite rule for --json and --plot: an existing report or plot is replaced only
    with --overwrite; an unfinished evaluation (OUT.json.partial) is continued with --resume
    or discarded with --overwrite, never silently. --resume auto accepts an existing report
    only when it is this very evaluation, complete (:func:`finished_report`)."""
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the evaluation kept in OUT.json.partial and "
                         "--overwrite discards it: pass one of them")
    if args.overwrite or report_to_compare(args):
        return
    partial = partial_path(args)
    unfinished = partial is not None and os.path.exists(partial)
    if unfinished and not args.resume:
        raise ValueError(f"--json {args.json}: {partial} holds an unfinished evaluation; pass "
                         "--resume to continue it, or --overwrite to start over")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        # A kill between writing the report and removing the partial file leaves both: the
        # resume rewrites the same report.
        if path and os.path.lexists(path) and not (args.resume and unfinished):
            raise ValueError(f"{flag} {path} already exists; pass --overwrite to replace it, "
                             "or choose another path")


def finished_report(args: argparse.Namespace, plan: Plan) -> EvalReport:
    """OUT.json, when it is the finished report of exactly what this command evaluates (and
    the plot asked for is there too); otherwise the refusal a plain start gives, saying why."""
    try:
        report = EvalReport.load_json(args.json)
    except Exception:  # noqa: BLE001 - any failure: not a report of ours
        report = None
    if report is None:
        why = "it is not a fastadv evaluation report"
    else:
        want, have = evaluation_record(args, plan), report_record(report)
        changed = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        why = f"it was written with other settings: {', '.join(changed)}" if changed else None
    if why is None and args.plot and not os.path.lexists(args.plot):
        why = f"--plot {args.plot} is missing"
    if why is not None:
        raise ValueError(f"--json {args.json} already exists and is not this command's "
                         f"finished evaluation ({why}); pass --overwrite to replace it, or "
                         "choose another path")
    return report


def evaluation_record(args: argparse.Namespace, plan: Plan) -> dict:
    """What this command's report will record about its evaluation: evaluate()'s own record
    (:func:`~fastadv.eval.evaluation.run_record`), and where the model and data came from."""
    attack = AttackSettings(eps=plan.eps, steps=args.steps, restarts=args.restarts,
                            alpha=args.alpha, loss=args.loss, precision=args.precision,
                            square_queries=args.square_queries)
    x, y = checked_data(plan.model, plan.x, plan.y)
    return {**run_record(plan.model, x, y, check_attacks(plan.attacks), attack,
                         batch_size=args.batch_size, seed=plan.seed, sanity_runs=args.sanity,
                         sanity_examples=args.sanity_examples, curve=args.curve,
                         curve_steps=args.curve_steps),
            "checkpoint": args.checkpoint, "dataset": plan.dataset, "split": "test",
            "model": plan.model_name, "training": plan.training}


def report_record(report: EvalReport) -> dict:
    """The same record, as a finished report holds it."""
    return {**report.settings, "attacks": list(report.attacks), "eps": report.eps,
            "n_examples": report.n_examples, "checkpoint": report.checkpoint,
            "dataset": report.dataset, "split": report.split, "model": report.model,
            "training": report.extra.get("training")}


@dataclasses.dataclass
class Plan:
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    seed: int
    dataset: str
    model_name: str
    training: dict
    attacks: tuple
    finished: EvalReport | None = None  # --resume auto: OUT.json already holds this evaluation


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail, and the loading, before anything is written."""
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(message)

    if args.eps is not None:
        need(0.0 <= args.eps <= 1.0, f"--eps must lie in [0, 1] (inputs are in [0, 1]), got "
                                     f"{args.eps:g}")
    if args.alpha is not None:
        need(0.0 < args.alpha <= 1.0, f"--alpha must lie in (0, 1], got {args.alpha:g}")
    for flag, value, low in (("--steps", args.steps, 1), ("--restarts", args.restarts, 1),
                             ("--square-queries", args.square_queries, 1),
                             ("--batch-size", args.batch_size, 1),
                             ("--sanity-examples", args.sanity_examples, 1),
                             ("--curve-steps", args.curve_steps, 1),
                             ("--n-examples", args.n_examples, 1), ("--seed", args.seed, 0)):
        high = MAX_SEED if flag == "--seed" else MAX_COUNT
        need(value is None or low <= value <= high,
             f"{flag} must lie in [{low}, {high}], got {value}")
    try:
        attacks = check_attacks(args.attacks)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None
    if any(a in EXTERNAL for a in attacks):
        torchattacks()
    need(not args.resume or args.json, "--resume needs --json OUT.json (the partial results "
                                       "live in OUT.json.partial)")
    need(not args.plot or args.curve, "--plot needs the curve; drop --no-curve")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingDependency(f"--plot needs matplotlib: {INSTALL_HINT}") from None
    for flag, path, example in (("--json", args.json, "report.json"),
                                ("--plot", args.plot, "curve.png")):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            need(os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK),
                 f"{flag} {path}: {folder} is not a writable directory")
            need(not os.path.isdir(path), f"{flag} {path} is a directory; give a file path "
                                          f"such as {os.path.join(path, example)}")
    check_outputs(args)
    device = resolve_device(args.device)

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"--checkpoint: {exc}") from None
    cfg, model_args = ckpt["config"], ckpt["model_args"]
    need(model_args is not None, f"--checkpoint {args.checkpoint}: it holds the weights of a "
                                 "model of your own (fastadv.fit); evaluate it in Python with "
                                 "fastadv.load_weights and fastadv.evaluate")
    try:  # built now: the trust rule and the recorded arguments are checked before the data
        model = model_from_checkpoint(ckpt, device, trust_code=args.trust_model_code,
                                      origin=f"checkpoint {args.checkpoint!r}")
    except ValueError as exc:
        raise ValueError(f"--checkpoint: {exc}") from None
    dataset = args.dataset or cfg.get("dataset")
    need(isinstance(dataset, str) and is_dataset(dataset),
         "--dataset: the checkpoint names no dataset; pass --dataset")
    eps = args.eps if args.eps is not None else cfg.get("eps")
    need(eps is not None, "--eps: the checkpoint records no training eps; pass --eps")
    need(isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0.0 <= eps <= 1.0,
         f"--eps: the checkpoint's training eps is {eps!r}, not a number in [0, 1]; pass "
         "--eps")
    seed = cfg.get("seed", 0) if args.seed is None else args.seed
    need(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
         f"--seed: the checkpoint's training seed is {seed!r}, not an integer in "
         f"[0, {MAX_SEED}]; pass --seed")
    # The training run's seed and sizes: they fix the digits train/test split (and the
    # synthetic data), so the test examples are the ones training never saw.
    data = _test_split(cfg, dataset, args, ckpt.get("data_fingerprint"))
    want = (model_args.get("in_channels"), model_args.get("image_size"),
            model_args.get("num_classes"))
    have = (data.shape[0], data.shape[1], data.num_classes)
    need(want == have, f"--dataset {dataset}: its images ({have[0]}x{have[1]}x{data.shape[2]}, "
                       f"{have[2]} classes) do not fit the checkpoint's model ({want[0]} "
                       f"channels, {want[1]} px, {want[2]} classes)")
    n = len(data.y_test) if args.n_examples is None else args.n_examples
    need(n <= len(data.y_test), f"--n-examples {n} exceeds the {len(data.y_test)} test examples "
                                f"of {dataset}")
    training = {k: cfg.get(k) for k in ("method", "eps", "epochs", "seed") if k in cfg}
    training["epoch"] = ckpt["progress"]["epoch"]
    plan = Plan(model, data.x_test[:n], data.y_test[:n], float(eps), seed, dataset,
                model_args["name"], training, attacks)
    if report_to_compare(args):
        plan.finished = finished_report(args, plan)
    return plan


@dataclasses.dataclass
class _TestSplit:
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def shape(self):
        return tuple(self.x_test.shape[1:])


def _test_split(cfg: dict, dataset: str, args, fingerprint: str | None = None):
    """The test split the training run reported on: a built-in dataset's, or an image
    folder's (decoded into memory: --n-examples bounds it)."""
    if not folder_data.is_folder_name(dataset):
        return load_run_dataset({**cfg, "dataset": dataset}, args.data_dir,
                                download=args.download)
    sources = folder_sources(
        normalize_dataset(dataset), image_size=cfg.get("image_size", 32),
        augment=cfg.get("augment"), workers=cfg.get("workers", 0), seed=cfg.get("seed", 0),
        val_size=cfg.get("val_size"), eval_examples=cfg.get("eval_examples", 1000),
        batch_size=cfg.get("batch_size", 64))
    same_folder = normalize_dataset(dataset) == cfg.get("dataset")
    if same_folder and fingerprint is not None and fingerprint != sources.splits.fingerprint:
        raise ValueError(f"--dataset {dataset}: its files changed since the checkpoint was "
                         "trained (added, removed or renamed), so its held-out split is not the "
                         "one the training left out; restore the folder")
    n = len(sources.test) if args.n_examples is None else min(args.n_examples,
                                                              len(sources.test))
    xs, ys, count = [], [], 0
    for x, y in sources.test.batches(256, 0, 1, torch.device("cpu")):
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= n:
            break
    return _TestSplit(torch.cat(xs)[:n], torch.cat(ys)[:n], len(sources.splits.classes))


def main(argv=None) -> int:
    """Exit status: 0 done (or --resume auto found it done), 1 an attack's points outside
    the ball or a failed write, 2 bad input (several torchrun processes included), 3 with
    --strict when a sanity check warns."""
    p = parser()
    args = p.parse_args(argv)
    refusal = one_process_refusal()
    if refusal is not None:  # one line, no usage: the flags are fine, the launch is not
        print(f"{PROG}: error: {refusal}", file=sys.stderr)
        return 2
    follow_torchrun_restart(args)
    try:
        plan = prepare(args)
    except (ValueError, MissingDependency, DatasetNotFoundError, DownloadError) as exc:
        p.error(str(exc))
    if plan.finished is not None:
        print(f"already complete: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
        return 3 if args.strict and not plan.finished.sanity_passed else 0
    partial = partial_path(args)
    lock = None
    if args.json:  # one evaluation per --json at a time (their partial files would mix)
        folder, name = os.path.split(os.path.abspath(args.json))
        lock = RunLock(os.path.join(folder, f".{name}.lock"), f"--json {args.json}")
        try:
            lock.acquire()
        except DirectoryBusy as exc:
            p.error(str(exc))
    try:
        return _run(p, args, plan, partial)
    except OSError as exc:
        if args.debug:
            raise
        kept = (f"; the completed work in {partial} is intact: --resume continues from it"
                if partial and os.path.exists(partial) else "")
        print(f"{PROG}: error: {write_failure(exc)}{kept} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()


def _run(p, args, plan: Plan, partial: str | None) -> int:
    if args.json:
        folder, name = os.path.split(os.path.abspath(args.json))
        names = {name, name + ".partial"}
        if args.plot:
            names.add(os.path.basename(args.plot))
        count, size = remove_leftovers(folder, names)
        if count:
            print(leftovers_line(count, size, folder), file=sys.stderr)
    resume = bool(args.resume)
    if args.overwrite and partial and os.path.exists(partial):
        if written_by_this_job(partial):
            resume = True  # this job's first attempt already discarded the old one
            print(f"torchrun restart {restart_count()}: continuing the evaluation this job "
                  f"kept in {partial}", file=sys.stderr)
        else:
            os.remove(partial)  # --overwrite: the unfinished evaluation is discarded, as asked
    elif resume and partial and os.path.exists(partial):
        print(f"resuming the evaluation kept in {partial}", file=sys.stderr)
    try:
        report = evaluate(
            plan.model, plan.x, plan.y, eps=plan.eps, attacks=plan.attacks, steps=args.steps,
            restarts=args.restarts, alpha=args.alpha, loss=args.loss,
            square_queries=args.square_queries, batch_size=args.batch_size,
            precision=args.precision, seed=plan.seed, sanity_runs=args.sanity,
            sanity_examples=args.sanity_examples, curve=args.curve,
            curve_steps=args.curve_steps, progress=args.progress, state_file=partial,
            resume=resume, keep_state_file=True)
    except (ValueError, MissingDependency) as exc:
        p.error(str(exc))
    except AttackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    report = dataclasses.replace(report, dataset=plan.dataset, split="test",
                                 checkpoint=args.checkpoint, model=plan.model_name,
                                 extra={"training": plan.training})
    if args.json:
        report.save_json(args.json)
    if args.plot:
        plot(report.curve["points"], args.plot, eps=report.eps, robust_acc=report.robust_acc,
             label=f"PGD-{args.curve_steps} accuracy (1 restart)",
             title=f"{plan.model_name} on {plan.dataset} ({report.curve['n_examples']} test "
                   f"examples), eps = {fmt_eps(report.eps)}")
    if partial and os.path.exists(partial):
        os.unlink(partial)  # only now: the report is safely on disk
    print(report.table())
    if args.json:
        print(f"\nreport: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 3 if args.strict and not report.sanity_passed else 0


def written_by_this_job(partial: str) -> bool:
    """Whether ``partial`` was written by an earlier attempt of this torchrun job (a restart
    of an --overwrite command continues it). Unknown ids (outside torchrun, the default
    "none", a file from before ids were recorded) never match: the file is discarded."""
    job = run_id()
    return restart_count() > 0 and job is not None and recorded_run_id(partial) == job
