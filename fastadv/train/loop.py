"""The one training loop, top to bottom: ``run`` takes a :class:`~fastadv.train.job.Job`
(model and data, from the command line's config or from ``fastadv.fit``) through setup →
resume → for each epoch, for each batch: attack, step, log; evaluate; checkpoint → the final
report. The helpers follow it in that order.

Everything random is either drawn from a generator seeded by (seed, epoch) (the batch order,
a streamed item's transform) or from the default generators whose states every checkpoint
holds, so a run killed at any point and resumed from its last.pt ends with the same weights
as one never interrupted (on the CPU; cuDNN's nondeterministic kernels make GPU runs only
statistically equal).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._io import WriteError, write_atomic, write_json
from .._rundir import (LOCK_NAME, DirectoryBusy, RunLock, launch_rank, leftovers_line,
                       remove_leftovers)
from ..checkpoint import (FORMAT, load_checkpoint, model_from_checkpoint, rng_state, save_checked,
                          set_rng_state)
from ..accuracy import correct_over_batches
from . import distributed
from .config import (FIT_PREFIX, RESUMABLE, VAL_CAP, VAL_FRACTION, TrainConfig,
                     TrainConfigError, check,
                     check_out_dir, killed_before_first_checkpoint)
from .job import Job, job_from_config
from .methods import make_method
from .schedule import scheduler
from .sources import StreamedEval, TensorEval
from .stall import chance_accuracy, stall_warning, stalled_record


# --------------------------------------------------------------------------- the run


def train(cfg: TrainConfig) -> dict:
    """Runs (or resumes) the training described by ``cfg`` (checked first: a bad value raises
    TrainConfigError naming its flag, before anything is written); returns the final summary."""
    return launch(cfg, lambda ctx: job_from_config(cfg, ctx))


def launch(cfg: TrainConfig, make_job: Callable[[distributed.Context], Job]) -> dict:
    """The run directory's lock, the process group, and :func:`run` of the job ``make_job``
    builds (after the group is up: the job's model and data live on the rank's device)."""
    check(cfg)
    # One run per --out: rank 0 holds the lock for the run's lifetime (the kernel drops it
    # when the process dies). An existing --out is locked before anything is decided on it.
    lock = (RunLock(os.path.join(cfg.out, LOCK_NAME), f"--out {cfg.out}")
            if launch_rank() == 0 else None)
    try:
        if lock is not None and os.path.isdir(cfg.out):
            _lock(lock)
        check_out_dir(cfg.out, cfg.resume)
        ctx = distributed.setup(cfg.device)
        try:
            _check_setup(cfg, ctx)
            summary = run(make_job(ctx), ctx, lock)
        except BaseException:
            distributed.teardown(ctx, clean=False)
            raise
        distributed.teardown(ctx, clean=True)
        return summary
    finally:
        if lock is not None:
            lock.release()


def run(job: Job, ctx: distributed.Context, lock: RunLock | None = None) -> dict:
    """Setup → resume → for each epoch, for each batch: attack, step, log; evaluate;
    checkpoint → the final report."""
    cfg, device = job.cfg, ctx.device

    # ---- model, optimizer, schedule
    raw = job.model
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    optimizer = make_optimizer(cfg, raw, job.optimizer)
    steps_per_epoch = job.train.steps_per_epoch(cfg.batch_size)
    replays = cfg.free_replays if cfg.method == "free" else 1
    sched = scheduler(optimizer, cfg.schedule, cfg.epochs * steps_per_epoch * replays)
    model = raw
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    attack_model = raw
    if cfg.compile:
        model = torch.compile(model)
        attack_model = model if not ctx.distributed else torch.compile(raw)
    method = make_method(cfg, model, attack_model, device)

    # ---- resume, or start the run directory
    _claim_out_dir(cfg, ctx, lock)
    last, best = os.path.join(cfg.out, "last.pt"), os.path.join(cfg.out, "best.pt")
    pending = best + ".pending"
    progress = _resume_or_start(job, ctx, raw, optimizer, sched, method, steps_per_epoch)
    distributed.barrier(ctx)
    if ctx.is_main:
        print(_first_line(job, ctx))

    # ---- epochs
    checkpoint = lambda path: save_checkpoint(  # noqa: E731
        path, ctx, job, raw, optimizer, sched, progress, method)
    local_batch = cfg.batch_size // ctx.world_size
    chance = chance_accuracy(job.train.labels(cfg.eval_examples))
    ramp_steps = cfg.eps_warmup * steps_per_epoch
    for epoch in range(progress.epoch, cfg.epochs):
        if cfg.strict and stalled_record(progress.history) is not None:
            if ctx.is_main:
                print(f"--strict: the training stalled (epoch "
                      f"{stalled_record(progress.history)['epoch']}); stopping after epoch "
                      f"{progress.epoch} of {cfg.epochs}", file=sys.stderr)
            break
        batches = job.train.epoch(epoch=epoch, start=progress.step_in_epoch,
                                  batch_size=cfg.batch_size, seed=cfg.seed, rank=ctx.rank,
                                  world_size=ctx.world_size, device=device)
        bar = tqdm(total=steps_per_epoch, initial=progress.step_in_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not (ctx.is_main and cfg.progress), dynamic_ncols=True)
        raw.train()
        _sync(device)
        started = time.perf_counter()
        for i, (x, y) in enumerate(batches, start=progress.step_in_epoch):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if ramp_steps:  # ε warm-up: linear in the batches done, so a resume redoes it
                method.set_eps_scale(min(1.0, (progress.global_step + 1) / ramp_steps))
            for loss, logits in method.losses(x, y):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sched.step()
                with torch.no_grad():
                    # sums stay on the device (no sync per step), in fp64 over a long epoch
                    progress.loss_sum += loss.detach().double() * len(y)
                    for name, part in method.loss_parts.items():
                        progress.part_sums[name] = (progress.part_sums.get(name, 0.0)
                                                    + part.detach().double() * len(y))
                    progress.correct += (logits.argmax(1) == y).sum()
                    progress.seen += len(y)
            progress.images += len(y)
            progress.step_in_epoch, progress.global_step = i + 1, progress.global_step + 1
            if not bar.disable and (bar.n % 10 == 0 or i + 1 == steps_per_epoch):  # syncs
                elapsed = progress.seconds + time.perf_counter() - started
                bar.set_postfix(loss=f"{float(progress.loss_sum) / progress.seen:.3f}",
                                acc=f"{float(progress.correct) / progress.seen:.1%}",
                                img_s=f"{progress.images * ctx.world_size / elapsed:.0f}")
            bar.update()
            if cfg.save_every and progress.global_step % cfg.save_every == 0 \
                    and i + 1 < steps_per_epoch:
                _sync(device)
                progress.seconds += time.perf_counter() - started
                _to_floats(progress)
                checkpoint(last)
                started = time.perf_counter()
        _sync(device)
        progress.seconds += time.perf_counter() - started
        bar.close()
        record = _epoch_record(ctx, raw, optimizer, method, progress, epoch, cfg)

        # ---- evaluation, model selection (Rice et al.: best robust validation accuracy)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            t0 = time.perf_counter()
            ev = lambda examples, split: clean_and_robust_accuracy(  # noqa: E731
                attack_model, examples, cfg, ctx, cfg.precision, 4 * local_batch, split)
            record["train_clean_acc"], record["train_robust_acc"] = ev(job.train_eval, "train")
            record["val_clean_acc"], record["val_robust_acc"] = ev(job.val, "val")
            record["eval_seconds"] = time.perf_counter() - t0
            score = record["val_clean_acc" if cfg.method == "standard" else "val_robust_acc"]
            if score > progress.best_score:
                progress.best_score, progress.best_epoch = score, epoch + 1
                record["best"] = True
        warning = stall_warning(progress.history + [record], job.num_classes, chance, cfg)
        if warning:  # once per run: kept in the history, so also across a resume
            record["stall_warning"] = warning
        progress.history.append(record)
        progress.epoch = epoch + 1
        progress.reset_epoch()

        # ---- checkpoints: best.pt is committed only after last.pt (a kill in between
        # resumes this epoch's end from the previous last.pt, and _settle_pending_best
        # decides on the pending one)
        if record.get("best"):
            checkpoint(pending)
        checkpoint(last)
        if record.get("best") and ctx.is_main:
            os.replace(pending, best)
        if ctx.is_main:
            _append_history(cfg.out, record)
            if not cfg.progress:
                print(_epoch_line(record, cfg.epochs), flush=True)
            else:
                tqdm.write(_epoch_line(record, cfg.epochs))
            if warning:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
    _check_ranks_agree(ctx, raw)

    # ---- final report on the test set
    return final_report(job, ctx, progress.history, local_batch)


# --------------------------------------------------------------------------- setup and resume


def _resume_or_start(job: Job, ctx: distributed.Context, raw, optimizer, sched, method,
                     steps_per_epoch: int) -> Progress:
    """The state of a resumed run (weights, optimizer, schedule, counters, every rank's RNG
    and method state, from last.pt), or a fresh one with config.json written."""
    cfg = job.cfg
    progress = Progress()
    last, best = os.path.join(cfg.out, "last.pt"), os.path.join(cfg.out, "best.pt")
    pending = best + ".pending"
    resuming = cfg.resume and not killed_before_first_checkpoint(cfg.out)
    if cfg.resume and not resuming:  # nothing to lose: check_out_dir made sure
        config = os.path.join(cfg.out, "config.json")
        if os.path.exists(config):  # absent when killed before writing it
            with open(config) as f:
                check_resumable(json.load(f), cfg)
        if ctx.is_main:
            print(f"no {last} yet: starting the run in {cfg.out} from the beginning")
    if resuming:
        try:
            ckpt = load_checkpoint(last)  # on the CPU: RNG states must stay there
        except ValueError as exc:
            raise TrainConfigError(f"--resume: {exc}") from None
        if ctx.is_main:
            _settle_pending_best(pending, best, ckpt)
        check_resumable(ckpt["config"], cfg)
        check_same_data(ckpt.get("data_fingerprint"), job.fingerprint, cfg)
        load_weights_into(unwrap(raw), ckpt["model"], last)
        optimizer.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        progress = Progress(**ckpt["progress"])
        if ckpt["world_size"] == ctx.world_size:
            mine = ckpt["ranks"][ctx.rank]
            set_rng_state(mine["rng"])
            method.load_state(mine["method"])
            (progress.loss_sum, progress.correct, progress.seen, progress.images,
             progress.seconds) = mine["sums"]
            progress.part_sums = dict(mine.get("part_sums", {}))
        else:
            if progress.step_in_epoch:
                raise TrainConfigError(f"--resume: {last} was written mid-epoch by "
                                       f"{ckpt['world_size']} ranks; resume it with as many")
            torch.manual_seed(cfg.seed * 1_000_003 + progress.epoch * 1009 + ctx.rank)
        if ctx.is_main:
            _write_history(cfg.out, progress.history)
            print(f"resuming {cfg.out} at epoch {progress.epoch + 1}, batch "
                  f"{progress.step_in_epoch + 1} of {steps_per_epoch}")
    else:
        if ctx.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            write_json(os.path.join(cfg.out, "config.json"),
                       {**cfg.to_dict(), "world_size": ctx.world_size,
                        "model_args": job.model_args, "data_fingerprint": job.fingerprint,
                        **job.extra_config})
            _write_history(cfg.out, [])
        torch.manual_seed(cfg.seed * 1_000_003 + ctx.rank)  # per-rank attack/augment noise
    return progress


def _lock(lock: RunLock) -> None:
    try:
        lock.acquire()
    except DirectoryBusy as exc:
        raise TrainConfigError(str(exc)) from None


def _check_setup(cfg: TrainConfig, ctx: distributed.Context) -> None:
    """The checks that need to know the devices and the number of ranks."""
    if cfg.cuda_graph and ctx.device.type != "cuda":
        raise TrainConfigError(f"--cuda-graph needs a CUDA device, got {ctx.device}")
    if cfg.sync_bn and ctx.distributed and ctx.device.type != "cuda":
        raise TrainConfigError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernels)")
    if cfg.batch_size % ctx.world_size:
        raise TrainConfigError(f"--batch-size {cfg.batch_size} must divide evenly over the "
                               f"{ctx.world_size} ranks")


def _claim_out_dir(cfg: TrainConfig, ctx: distributed.Context, lock: RunLock | None) -> None:
    """Rank 0 creates --out, takes its lock (a run that started in the same instant may have
    it), checks --out again under the lock and removes what killed writes left; every rank
    fails with rank 0's error, so none waits for a rank that stopped."""
    error = None
    if ctx.is_main:
        try:
            os.makedirs(cfg.out, exist_ok=True)
            _lock(lock)
            check_out_dir(cfg.out, cfg.resume)
            count, size = remove_leftovers(cfg.out)
            if count:
                print(leftovers_line(count, size, cfg.out))
        except TrainConfigError as exc:
            error = str(exc)
    error = distributed.all_gather(ctx, error)[0]
    if error is not None:
        raise TrainConfigError(error)


def make_optimizer(cfg: TrainConfig, raw: nn.Module, given=None) -> torch.optim.Optimizer:
    """--optimizer's, or fit(optimizer=...): an Optimizer over the model's parameters, or a
    factory called with them."""
    if isinstance(given, torch.optim.Optimizer):
        return given
    if callable(given):
        optimizer = given(raw.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TrainConfigError(f"optimizer: the factory returned a "
                                   f"{type(optimizer).__name__}, not a torch.optim.Optimizer")
        return optimizer
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(raw.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(raw.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_resumable(saved: dict, cfg: TrainConfig) -> None:
    # A setting the saved run predates (absent from its config) took its default then.
    fields = TrainConfig.__dataclass_fields__
    was = {k: saved.get(k, fields[k].default) for k in fields}
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE and was[k] != v]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {was[k]!r} -> {getattr(cfg, k)!r}"
                          for k in changed)
        raise TrainConfigError(f"--resume: the run in {cfg.out} was started with other "
                               f"settings ({diffs}); resume with the same flags, or start a "
                               "new --out")


def check_same_data(saved: str | None, now: str | None, cfg: TrainConfig) -> None:
    if saved is None or now is None or saved == now:
        return
    if cfg.dataset.startswith(FIT_PREFIX):
        raise TrainConfigError(f"resume: the run in {cfg.out} was trained on other data or "
                               f"settings (then: {saved}; now: {now}); resume with the same, "
                               "or start a new out")
    if saved is not None and now is not None and saved != now:
        raise TrainConfigError(f"--resume: the data of --dataset {cfg.dataset} changed since "
                               f"the run in {cfg.out} started (files added, removed or "
                               "renamed); restore it, or start a new --out")


def load_weights_into(model: nn.Module, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainConfigError(f"{path}: its weights do not fit this model ({exc})") from None


def _settle_pending_best(pending: str, best: str, last_ckpt: dict) -> None:
    """A best.pt.pending left by a kill between writing it and committing last.pt: it is the
    best checkpoint if last.pt got to its epoch (then only the rename was missed), else that
    epoch will be redone and the pending file is stale."""
    if not os.path.exists(pending):
        return
    done = load_checkpoint(pending)["progress"]["epoch"] == last_ckpt["progress"]["epoch"]
    if done:
        os.replace(pending, best)
    else:
        os.remove(pending)


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Progress:
    """Where the run is, and the running sums of the epoch in progress (per rank)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch completed
    global_step: int = 0  # batches completed overall
    best_score: float = -math.inf
    best_epoch: int | None = None
    history: list = field(default_factory=list)
    loss_sum: float = 0.0
    part_sums: dict = field(default_factory=dict)  # the method's loss terms (TRADES: CE, KL)
    correct: float = 0.0
    seen: float = 0.0  # losses/predictions counted (free AT: every replay)
    images: float = 0.0  # examples of the epoch trained on so far
    seconds: float = 0.0  # training time of the epoch so far

    def reset_epoch(self):
        self.step_in_epoch, self.loss_sum, self.correct, self.seen = 0, 0.0, 0.0, 0.0
        self.part_sums = {}
        self.images, self.seconds = 0.0, 0.0


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def save_checkpoint(path, ctx, job: Job, raw, optimizer, sched, progress, method):
    """Gathers every rank's RNG state, running sums and method state; rank 0 writes."""
    per_rank = {"rng": rng_state(), "method": method.state(),
                "sums": [progress.loss_sum, progress.correct, progress.seen, progress.images,
                         progress.seconds], "part_sums": dict(progress.part_sums)}
    ranks = distributed.gather_to_main(ctx, per_rank)
    if ctx.is_main:
        state = {k: v for k, v in progress.__dict__.items()
                 if k not in ("loss_sum", "part_sums", "correct", "seen", "images", "seconds")}
        save_checked({
            "format": FORMAT, "config": job.cfg.to_dict(), "model_args": job.model_args,
            "model": _plain_state_dict(raw), "optimizer": optimizer.state_dict(),
            "scheduler": sched.state_dict(), "scaler": None,  # bf16 needs no loss scaling
            "progress": state, "ranks": ranks, "world_size": ctx.world_size,
            "torch": str(torch.__version__), "data_fingerprint": job.fingerprint,
        }, path)
    distributed.barrier(ctx)


def _plain_state_dict(model: nn.Module) -> dict:
    """The weights under the names a freshly built model uses (no DDP/compile prefixes)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(unwrap(model)).state_dict().items()}


def _to_floats(progress: Progress) -> None:
    for name in ("loss_sum", "correct"):
        value = getattr(progress, name)
        if isinstance(value, Tensor):
            setattr(progress, name, float(value))
    progress.part_sums = {k: float(v) for k, v in progress.part_sums.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_record(ctx, raw, optimizer, method, progress: Progress, epoch: int,
                  cfg: TrainConfig) -> dict:
    """The epoch's training figures, summed over ranks."""
    _to_floats(progress)
    loss_sum, correct, seen, images = distributed.all_sum(
        ctx, [progress.loss_sum, progress.correct, progress.seen, progress.images])
    seconds = max(distributed.all_sum(ctx, [progress.seconds])[0] / ctx.world_size, 1e-9)
    part_names = sorted(progress.part_sums)  # the same on every rank (the same method)
    part_sums = (distributed.all_sum(ctx, [progress.part_sums[n] for n in part_names])
                 if part_names else [])
    distributed.broadcast_buffers(ctx, raw)  # evaluate (and save) rank 0's BN statistics
    record = {"epoch": epoch + 1, "step": progress.global_step,
              "lr": optimizer.param_groups[0]["lr"], "loss": loss_sum / seen,
              "batch_acc": correct / seen, "images_per_s": images / seconds,
              "seconds": seconds}
    if part_names:
        record["loss_parts"] = {n: v / seen for n, v in zip(part_names, part_sums)}
    if cfg.eps_warmup:
        record["eps"] = method.eps  # the training ε of the epoch's last batch
    return record


def _check_ranks_agree(ctx: distributed.Context, raw: nn.Module) -> None:
    """DDP keeps every rank's weights identical; a cheap check that it did (every rank
    raises, so none is left waiting in a collective)."""
    if not ctx.distributed:
        return
    total = sum(p.detach().double().sum().item() for p in raw.parameters())
    sums = distributed.all_gather(ctx, total)
    if len(set(sums)) != 1:
        raise RuntimeError(f"ranks ended with different weights (parameter sums {sums})")


# --------------------------------------------------------------------------- evaluation


# Which examples an evaluation attacks: each set has its own fixed stream of random starts.
EVAL_STREAMS = {"train": 1, "val": 2, "test": 3}


def eval_generator(cfg: TrainConfig, split: str, ctx: distributed.Context) -> torch.Generator:
    """A fresh generator (on the rank's device: no host round trip per batch) for the random
    starts of one evaluation of ``split``, seeded from the run's seed: every evaluation of a
    split draws the same starts (so identical weights score identically: best.pt vs last.pt,
    one epoch vs the next), and the training stream (the default generators, which
    checkpoints hold) is never touched."""
    seed = 0x5EED_0000_0000 + EVAL_STREAMS[split] * 2**32 + cfg.seed * 4099 + ctx.rank
    return torch.Generator(device=ctx.device).manual_seed(seed)


def clean_and_robust_accuracy(model: nn.Module, examples: TensorEval | StreamedEval,
                              cfg: TrainConfig, ctx: distributed.Context, precision: str,
                              batch_size: int, split: str):
    """(clean accuracy, PGD-k accuracy) at ε with α = 2.5ε/k (Madry et al.), one random start
    from ``split``'s fixed evaluation generator, the model in eval mode; examples split
    across ranks (dense slices, so the fused op takes its fast path), counts summed."""
    batches = examples.batches(batch_size, ctx.rank, ctx.world_size, ctx.device)
    clean, robust = correct_over_batches(model, batches, eps=cfg.eps, steps=cfg.eval_steps,
                                         precision=precision,
                                         generator=eval_generator(cfg, split, ctx))
    count = examples.local_count(ctx.rank, ctx.world_size)
    clean, robust, count = distributed.all_sum(ctx, [clean, robust, count])
    return clean / max(count, 1), robust / max(count, 1)


# --------------------------------------------------------------------------- reports


def _first_line(job: Job, ctx: distributed.Context) -> str:
    cfg = job.cfg
    n_train, n_val = len(job.train), len(job.val)
    if job.val_held_out:
        held = ("--val-size" if cfg.val_size is not None else
                f"default: {VAL_FRACTION:.0%} of the training set, at most {VAL_CAP}")
        validation = f"{n_val} of the {n_train + n_val} held out for validation ({held})"
    else:
        validation = f"{n_val} given for validation"
    warmup = f" (warm-up: from 0 over {cfg.eps_warmup} epochs)" if cfg.eps_warmup else ""
    test = f"{len(job.test)} test" if job.test is not None else "no test set"
    return (f"{cfg.method} training of {cfg.model} on {cfg.dataset} ({job.describe}): "
            f"training on {n_train} examples, {validation}, {test}; "
            f"eps={cfg.eps:.4g}{warmup}, alpha={cfg.alpha:.4g}, steps={cfg.steps}, "
            f"device={ctx.device}, world size {ctx.world_size}")


def _epoch_line(r: dict, epochs: int) -> str:
    line = (f"epoch {r['epoch']:>3}/{epochs}  loss {r['loss']:.4f}  batch acc "
            f"{r['batch_acc']:6.1%}  {r['images_per_s']:8.0f} img/s  {r['seconds']:6.1f} s")
    if "val_robust_acc" in r:
        line += (f"  | train clean {r['train_clean_acc']:6.1%} robust {r['train_robust_acc']:6.1%}"
                 f"  val clean {r['val_clean_acc']:6.1%} robust {r['val_robust_acc']:6.1%}"
                 + ("  *best" if r.get("best") else ""))
    return line


def final_report(job: Job, ctx, history, local_batch) -> dict:
    """Test-set (or, with no test set, validation) clean and PGD accuracy of best.pt and
    last.pt (fp32), as results.json and a table."""
    cfg = job.cfg
    split, examples = ("test", job.test) if job.test is not None else ("val", job.val)
    rows = []
    for name in ("best", "last"):
        path = os.path.join(cfg.out, f"{name}.pt")
        if not os.path.exists(path):
            continue
        ckpt = load_checkpoint(path)
        # The same random starts for every checkpoint: identical weights, identical numbers.
        clean, robust = clean_and_robust_accuracy(rebuilt(job, ckpt, ctx.device), examples, cfg,
                                                  ctx, "fp32", 4 * local_batch, split)
        rows.append({"checkpoint": name, "epoch": ckpt["progress"]["epoch"],
                     f"{split}_clean_acc": clean, f"{split}_robust_acc": robust})
    stalled = stalled_record(history)
    summary = {
        "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "eps": cfg.eps,
        "attack": f"PGD-{cfg.eval_steps}, alpha=2.5*eps/{cfg.eval_steps}, 1 random start "
                  "(the same starts for every checkpoint)",
        "split": split, f"{split}_examples": len(examples), "epochs": cfg.epochs,
        "epochs_completed": len(history),
        "stalled": stalled is not None,
        "stall": None if stalled is None else {"detected_at_epoch": stalled["epoch"],
                                               "warning": stalled["stall_warning"]},
        "stopped_early": len(history) < cfg.epochs,
        "train_seconds": sum(r["seconds"] for r in history),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
        "checkpoints": rows,
    }
    if ctx.is_main:
        write_json(os.path.join(cfg.out, "results.json"), summary)
        print(summary_table(summary))
    return summary


def rebuilt(job: Job, ckpt: dict, device) -> nn.Module:
    """A checkpoint's model in eval mode: rebuilt from its recipe, or (a module of the
    caller's, weights only) a copy of the job's with the weights loaded."""
    if job.model_args is not None:
        return model_from_checkpoint(ckpt, device)
    model = copy.deepcopy(unwrap(job.model))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _epochs_done(summary: dict) -> str:
    done = summary.get("epochs_completed", summary["epochs"])
    return str(done) if done == summary["epochs"] else f"{done} of {summary['epochs']}"


_SPLIT_NAMES = {"test": "test set", "val": "validation split (no test set given)"}


def summary_table(summary: dict) -> str:
    split = summary.get("split", "test")
    lines = [f"\n{summary['method']} training of {summary['model']} on {summary['dataset']}, "
             f"eps={summary['eps']:.4g}: {_epochs_done(summary)} epochs, "
             f"{summary['train_seconds']:.1f} s training + {summary['eval_seconds']:.1f} s "
             f"evaluation",
             f"{_SPLIT_NAMES[split]} ({summary[f'{split}_examples']} images), "
             f"{summary['attack']}:",
             "| checkpoint | epoch | clean accuracy | robust accuracy |",
             "|---|---:|---:|---:|"]
    for r in summary["checkpoints"]:
        lines.append(f"| {r['checkpoint']} | {r['epoch']} | {r[f'{split}_clean_acc']:.1%} "
                     f"| {r[f'{split}_robust_acc']:.1%} |")
    if summary.get("stalled"):
        stopped = (f"; stopped after epoch {summary['epochs_completed']} (--strict)"
                   if summary.get("stopped_early") else "")
        lines.append(f"warning: the training stalled (detected at epoch "
                     f"{summary['stall']['detected_at_epoch']}; the warning is in "
                     f"metrics.jsonl and results.json){stopped}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def _write_history(out: str, history: list) -> None:
    """metrics.jsonl rewritten from a checkpoint's history: lines a killed run appended
    after its last checkpoint are dropped, so no epoch appears twice."""
    write_atomic(os.path.join(out, "metrics.jsonl"),
                 "".join(json.dumps(record) + "\n" for record in history).encode())


def _append_history(out: str, record: dict) -> None:
    path = os.path.join(out, "metrics.jsonl")
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a partial line is dropped on resume (rewritten from last.pt)
        raise WriteError(exc.errno, exc.strerror or str(exc), path) from exc
