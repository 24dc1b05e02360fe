"""The run directory (``--out``) through a run's life, decided in one place: whether a run
starts, resumes or is refused; its lock; the temp files killed writes left; its files
(``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``results.json``); and the
pending best checkpoint a kill can leave between writing ``best.pt`` and committing
``last.pt``. docs/ARCHITECTURE.md draws the lifecycle."""

from __future__ import annotations

import json
import os

from .._io import WriteError, json_record, write_atomic, write_json
from .._outdir import (LOCK_NAME, DirectoryBusy, RunLock, is_temp_name, launch_rank,
                       leftovers_line, remove_leftovers, restart_count, run_id)
from ..checkpoint import checkpoint_state, load_checkpoint
from ..errors import TrainConfigError
from . import distributed
from .config import FIT_PREFIX, RESUMABLE, SETTING


OWN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "best.pt.pending",
             "results.json")
# Keys every config.json the trainer writes holds besides the settings: a file without them
# is not ours, whatever its name.
_RECORD_KEYS = ("model_args", "world_size", "dataset", "method", "eps")


def is_our_config(path: str) -> bool:
    """Whether ``path`` is a config.json the trainer wrote (told from its contents)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in _RECORD_KEYS)


def killed_before_first_checkpoint(out: str) -> bool:
    """Whether ``out`` holds a run killed before its first checkpoint, at whatever instant:
    one that wrote its config.json (ours, by its contents) and nothing else yet (no last.pt,
    best.pt, results or epoch metrics), or one killed even before that, whose folder holds
    nothing but the run's lock and the temp files of interrupted writes (or nothing at all).
    Such a run has nothing to lose: it can only start again."""
    if not os.path.isdir(out):
        return False
    d = RunDir(out)
    if any(os.path.exists(p) for p in (d.last, d.best, d.results)) or (
            os.path.exists(d.metrics) and os.path.getsize(d.metrics) > 0):
        return False
    # A best.pt.pending without last.pt: killed between the two writes of the first epoch
    # (the pending file is stale: that epoch was never committed).
    own = {os.path.basename(p) for p in (d.lock_path, d.metrics, d.config, d.pending)}
    if os.path.exists(d.config) and not is_our_config(d.config):
        return False
    return all(name in own or is_temp_name(name) for name in os.listdir(out))


def _listing(out: str) -> str:
    names = sorted(n for n in os.listdir(out) if n != LOCK_NAME and not is_temp_name(n))
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return shown


def check_out_dir(out: str, resume: bool, overwrite: bool = False, verdict: bool = True) -> None:
    """The overwrite rule, checked before anything is written (a bad --out leaves nothing
    behind): --out must be new, empty or a run killed before its first checkpoint (it starts
    again); --resume needs a last.pt to continue; anything else (an unfinished or a finished
    run, files of the user's) is refused, naming what is there, unless --overwrite. Then
    --out must be writable. Without ``verdict`` only the last part: whether the run starts or
    resumes is decided once every rank is up (:meth:`RunDir.claim`)."""
    d = RunDir(out)
    if verdict:
        if resume and not os.path.isfile(d.last) and not killed_before_first_checkpoint(out):
            held = _listing(out) if os.path.isdir(out) else ""
            raise TrainConfigError(f"--resume: {d.last} does not exist (nothing to resume in --out "
                                   f"{out}{'; it holds ' + held if held else ''})")
        if not resume and not overwrite and os.path.isdir(out) \
                and not killed_before_first_checkpoint(out):
            if os.path.exists(d.last):
                what = (f"a run, finished ({_listing(out)})" if os.path.exists(d.results) else
                        f"a run, unfinished ({d.last}: {checkpoint_state(d.last)})")
                hint = "pass --resume to continue it, " if not os.path.exists(d.results) else ""
            elif any(os.path.exists(p) for p in (d.results, d.best, d.pending)):
                what = f"the files of a run, without its last.pt ({_listing(out)})"
                hint = ""
            else:
                what = f"files that are not a fastadv run ({_listing(out)})"
                hint = ""
            raise TrainConfigError(f"--out {out} already holds {what}; {hint}pass --overwrite to "
                                   "replace it, or choose another --out")
    if not os.path.exists(out) and os.path.lexists(out):
        raise TrainConfigError(f"--out {out} is a broken symbolic link")
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainConfigError(f"--out {out} is a file, not a directory")
    probe = out
    while not os.path.exists(probe):  # the nearest existing ancestor must let us create it
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise TrainConfigError(f"--out {out} is not writable ({probe} is not a writable directory)")


def remove_own_files(out: str) -> list[str]:
    """--overwrite: the files of the trainer's names in ``out`` (a previous run's), removed
    before the new run writes any; the user's other files stay. Returns the names removed."""
    removed = []
    for name in OWN_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def saved_settings(out: str) -> dict | None:
    """The settings of the run in ``out`` that ``--resume`` continues: last.pt's (config.json
    must agree with them), config.json's for a run killed before its first checkpoint, or
    None for one killed before it wrote even that (the flags given now are the run's).
    Another live run's files are not read: a busy ``out`` is refused first."""
    d = RunDir(out)
    if d.lock is not None and os.path.isdir(out):
        # train() takes the lock for the run's lifetime; this only reports a busy --out.
        _acquire(d.lock)
        d.release()
    check_out_dir(out, resume=True)  # there is a run to resume
    if killed_before_first_checkpoint(out):
        if not os.path.exists(d.config):
            return None
        try:
            with open(d.config) as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TrainConfigError(f"--resume: {d.config} is not valid JSON ({exc}); "
                                   "restore it or start a new --out") from None
    try:
        saved = load_checkpoint(d.last)["config"]
    except ValueError as exc:
        raise TrainConfigError(f"--resume: {exc}. {_damaged_last_advice(d.best)}") from None
    _check_config_json(d.config, saved)
    return saved


def _damaged_last_advice(best: str) -> str:
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


def check_resumable(saved: dict, cfg, auto: bool = False) -> None:
    """A resume runs with the settings the run started with, but for RESUMABLE ones."""
    # A setting the saved run predates (absent from its config) took its default then.
    was = {s.name: saved.get(s.name, s.default) for s in SETTING.values()}
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE and was[k] != v]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {was[k]!r} -> {getattr(cfg, k)!r}"
                          for k in changed)
        if auto:
            raise TrainConfigError(f"{_AUTO}: --out {cfg.out} holds another run ({diffs}); it "
                                   "is left as it is: choose another --out (or resume it with "
                                   "its own settings)")
        raise TrainConfigError(f"--resume: the run in {cfg.out} was started with other "
                               f"settings ({diffs}); resume with the same flags, or start a "
                               "new --out")


def check_same_data(saved: str | None, now: str | None, cfg) -> None:
    if saved is None or now is None or saved == now:
        return
    if cfg.dataset.startswith(FIT_PREFIX):
        raise TrainConfigError(f"resume: the run in {cfg.out} was trained on other data or "
                               f"settings (then: {saved}; now: {now}); resume with the same, "
                               "or start a new out")
    raise TrainConfigError(f"--resume: the data of --dataset {cfg.dataset} changed since "
                           f"the run in {cfg.out} started (files added, removed or "
                           "renamed); restore it, or start a new --out")


_AUTO = "--resume auto"


def resume_decision(out: str, cfg) -> bool:
    """--resume auto, and every start of a restarted torchrun job: whether the command
    resumes the run in ``out`` (its last.pt, if the run's settings are this command's) or
    starts it (then the overwrite rule applies as to any start). A folder holding another
    run, or a damaged last.pt, is refused and left as it is."""
    d = RunDir(out)
    if not os.path.isfile(d.last):
        return False
    try:
        saved = load_checkpoint(d.last)["config"]
    except ValueError as exc:
        raise TrainConfigError(f"{_AUTO}: {exc}. {_damaged_last_advice(d.best)}") from None
    _check_config_json(d.config, saved)
    check_resumable(saved, cfg, auto=True)
    return True


def started_by_this_launch(config_path: str) -> bool:
    """Whether the run's config.json was written by an earlier attempt of this same torchrun
    job (so a restart of a command with --overwrite must resume it, not replace it)."""
    launch = run_id()
    if launch is None or not os.path.isfile(config_path):
        return False
    try:
        with open(config_path) as f:
            return json.load(f).get("torchelastic_run_id") == launch
    except (OSError, ValueError, AttributeError):
        return False


def settle_pending_best(pending: str, best: str, last_ckpt: dict) -> None:
    """A best.pt.pending left by a kill between writing it and committing last.pt: it is the
    best checkpoint if last.pt got to its epoch (then only the rename was missed), else that
    epoch will be redone and the pending file is stale."""
    if not os.path.exists(pending):
        return
    try:
        done = load_checkpoint(pending)["progress"]["epoch"] == last_ckpt["progress"]["epoch"]
    except ValueError:  # damaged (killed mid-write is impossible: writes are atomic)
        done = False
    if done:
        os.replace(pending, best)
    else:
        os.remove(pending)


def _acquire(lock: RunLock) -> None:
    try:
        lock.acquire()
    except DirectoryBusy as exc:
        raise TrainConfigError(str(exc)) from None


class RunDir:
    """``out`` for one run: its paths, built here only, and each step of its lifecycle.
    Rank 0 holds the lock and writes; every rank reads."""

    def __init__(self, out: str):
        self.out = out
        path = lambda name: os.path.join(out, name)  # noqa: E731
        self.last, self.best = path("last.pt"), path("best.pt")
        self.pending = self.best + ".pending"
        self.config, self.metrics, self.results = (path("config.json"), path("metrics.jsonl"),
                                                   path("results.json"))
        self.lock_path = path(LOCK_NAME)
        self.lock = RunLock(self.lock_path, f"--out {out}") if launch_rank() == 0 else None
        self.saved = None  # (epoch, batch) of the last last.pt this process wrote or resumed

    # ---- before the process group: refuse early, writing nothing

    def check(self, resume: bool, overwrite: bool = False, verdict: bool = True) -> None:
        """An existing --out is locked before anything is decided on it (the kernel drops
        the lock when the process dies); then :func:`check_out_dir`."""
        if self.lock is not None and os.path.isdir(self.out):
            _acquire(self.lock)
        check_out_dir(self.out, resume, overwrite, verdict)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # ---- with every rank up

    def claim(self, ctx: distributed.Context, cfg, auto: bool = False) -> bool:
        """Rank 0 creates --out, takes its lock (a run that started in the same instant may
        have it), decides whether the run resumes, checks --out again under the lock, removes
        what killed writes left and, with ``cfg.overwrite``, the previous run's files; every
        rank takes rank 0's decision, or fails with its error, so none waits for a rank that
        stopped. Returns whether the run resumes.

        The run resumes with ``cfg.resume``; with ``auto`` (``--resume auto``) or on a
        torchrun restart of a job that claimed this --out before, when last.pt is this run
        (:func:`resume_decision`). A restart whose earlier attempts never got this far (they
        were refused, say) is decided as a first start."""
        # An agent restarting for another node's failure keeps its count: any rank's counts.
        restarted = max(distributed.all_gather(ctx, restart_count())) > 0
        resume, overwrite, error = cfg.resume, cfg.overwrite, None
        if ctx.is_main:
            try:
                os.makedirs(self.out, exist_ok=True)
                _acquire(self.lock)
                ours = restarted and self._claimed_by_this_job(ctx)
                if restarted and overwrite and not ours and run_id() is None \
                        and ctx.agent_store is None:
                    print(f"torchrun restart: --overwrite replaces --out {self.out} again (a "
                          "job whose --rdzv-id is 'none' cannot tell its own run from the "
                          "one it replaced: give it a unique --rdzv-id)")
                if ours or (auto and not resume):
                    resume = resume or resume_decision(self.out, cfg)
                    overwrite = overwrite and not resume  # only the files of fastadv's names
                check_out_dir(self.out, resume, overwrite)
                count, size = remove_leftovers(self.out, set(OWN_FILES))
                if count:
                    print(leftovers_line(count, size, self.out))
                if overwrite:
                    removed = remove_own_files(self.out)
                    if removed:
                        print(f"--overwrite: removed {', '.join(removed)} from {self.out}")
                self._mark_claimed(ctx)
            except TrainConfigError as exc:
                error = str(exc)
        error, resume = distributed.all_gather(ctx, (error, resume))[0]
        if error is not None:
            raise TrainConfigError(error)
        return resume

    def _claim_key(self) -> str:
        return f"fastadv/claimed/{os.path.abspath(self.out)}"

    def _claimed_by_this_job(self, ctx: distributed.Context) -> bool:
        """Whether an earlier attempt of this torchrun job claimed --out: a mark in
        torchrun's key-value store, which lives as long as the job; without that store, the
        job id its config.json records."""
        if ctx.agent_store is not None:
            try:
                return ctx.agent_store.check([self._claim_key()])
            except RuntimeError:  # the store is gone with its host: ask config.json
                pass
        return started_by_this_launch(self.config)

    def _mark_claimed(self, ctx: distributed.Context) -> None:
        if ctx.agent_store is not None:
            ctx.agent_store.set(self._claim_key(), "1")

    def checkpoint_to_resume(self, cfg, ctx: distributed.Context, fingerprint: str | None,
                             resume: bool) -> dict | None:
        """last.pt when the run resumes (checked against ``cfg`` and the data's
        ``fingerprint``; a pending best settled), or None when it starts: also on --resume of
        a run killed before its first checkpoint, whose config.json must then agree."""
        if resume and killed_before_first_checkpoint(self.out):
            if os.path.exists(self.config):  # absent when killed before writing it
                with open(self.config) as f:
                    check_resumable(json.load(f), cfg)
            if ctx.is_main:
                print(f"no {self.last} yet: starting the run in {self.out} from the beginning")
            return None
        if not resume:
            return None
        try:
            ckpt = load_checkpoint(self.last)  # on the CPU: RNG states must stay there
        except ValueError as exc:
            raise TrainConfigError(f"--resume: {exc}") from None
        if ctx.is_main:
            settle_pending_best(self.pending, self.best, ckpt)
        check_resumable(ckpt["config"], cfg)
        check_same_data(ckpt.get("data_fingerprint"), fingerprint, cfg)
        return ckpt

    def start(self, record: dict) -> None:
        """config.json (the run's settings as started) and an empty metrics.jsonl."""
        os.makedirs(self.out, exist_ok=True)
        write_json(self.config, record)
        self.write_history([])

    def commit_best(self) -> None:
        """best.pt.pending becomes best.pt, once last.pt of the same epoch is written."""
        os.replace(self.pending, self.best)

    def write_history(self, history: list) -> None:
        """metrics.jsonl rewritten from a checkpoint's history: lines a killed run appended
        after its last checkpoint are dropped, so no epoch appears twice."""
        write_atomic(self.metrics,
                     "".join(json_record(record) + "\n" for record in history).encode())

    def append_history(self, record: dict) -> None:
        try:
            with open(self.metrics, "a") as f:
                f.write(json_record(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a partial line is dropped on resume (rewritten from last.pt)
            raise WriteError(exc.errno, exc.strerror or str(exc), self.metrics) from exc

    def write_results(self, summary: dict) -> None:
        write_json(self.results, summary)
