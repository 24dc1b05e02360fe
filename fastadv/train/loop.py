"""The one training loop, top to bottom: ``run`` takes a :class:`~fastadv.train.job.Job`
(model and data, from the command line's config or from ``fastadv.fit``) through setup →
resume → for each epoch, for each batch: attack, step, log; evaluate; checkpoint → the final
report. Where the run directory stands is :mod:`~fastadv.train.rundir`'s business, what is
printed :mod:`~fastadv.train.report`'s, and what a method does per batch its
:class:`~fastadv.train.methods.Method`'s.

Everything random is either drawn from a generator seeded by (seed, epoch) (the batch order,
a streamed item's transform) or from the default generators whose states every checkpoint
holds, so a run killed at any point and resumed from its last.pt ends with the same weights
as one never interrupted (on the CPU; cuDNN's nondeterministic kernels make GPU runs only
statistically equal).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .._outdir import run_id, under_torchelastic
from ..checkpoint import FORMAT, rng_state, save_checked, set_rng_state
from . import distributed, elastic
from .awp import WeightPerturbation
from .config import (TrainConfig, TrainConfigError, check, check_resume_or_overwrite,
                     check_setup)
from .divergence import DivergenceGuard, non_finite_tensors
from .ema import WeightAverage
from .job import Job, job_from_config
from .meter import EpochMeter, Progress
from .methods import make_method, method_class
from .overfit import collapse_warning, own_attack_accuracy, overfit_record
from .report import epoch_line, final_report, first_line, unwrap
from .rundir import RunDir
from .schedule import scheduler
from .stall import chance_accuracy, stall_warning, stalled_record
from .validation import clean_and_robust_accuracy


def train(cfg: TrainConfig, auto_resume: bool = False, pass_on_sigterm: bool = True) -> dict:
    """Runs (or resumes) the training described by ``cfg`` (checked first: a bad value raises
    TrainConfigError naming its flag, before anything is written); returns the final summary.
    ``auto_resume``: ``--resume auto`` (resume the run in ``cfg.out`` if it is this one).
    ``pass_on_sigterm``: see :func:`launch`."""
    return launch(cfg, lambda ctx: job_from_config(cfg, ctx), auto_resume, pass_on_sigterm)


def launch(cfg: TrainConfig, make_job: Callable[[distributed.Context], Job],
           auto_resume: bool = False, pass_on_sigterm: bool = True) -> dict:
    """The run directory's lock, the process group, and :func:`run` of the job ``make_job``
    builds (after the group is up: the job's model and data live on the rank's device).
    SIGTERM stops the run at the next batch boundary with last.pt written
    (:class:`~fastadv.train.elastic.RunStopped`); a rank lost under torchrun is reported as
    :class:`~fastadv.train.elastic.PeerLost`, one line, instead of the transport's error.
    A SIGTERM that comes after the last batch is delivered again on return when
    ``pass_on_sigterm`` (a library call: the caller's process was asked to end), and
    dropped otherwise (the command line, which ends anyway)."""
    check(cfg)
    if auto_resume:
        check_resume_or_overwrite(True, cfg.overwrite)
    rundir = RunDir(cfg.out)
    try:
        # A restarted torchrun worker may resume a run another rank's count reveals: the
        # verdict waits for every rank (RunDir.claim).
        rundir.check(cfg.resume, cfg.overwrite,
                     verdict=not (auto_resume or under_torchelastic()))
        ctx = distributed.setup(cfg.device, cfg.dist_timeout)
        # Installed until the group is closed: torchrun's SIGTERM to the survivors of a lost
        # rank must not end them before they have said which rank it was.
        with elastic.StopSignal(pass_on_sigterm) as stop:
            try:
                check_setup(cfg, ctx.device, ctx.world_size, ctx.distributed)
                summary = run(make_job(ctx), ctx, rundir, stop, auto_resume)
            except elastic.RunStopped:
                stop.stopped = True
                distributed.teardown(ctx, clean=True)  # every rank stopped at one boundary
                raise
            except BaseException as exc:
                lost = _lost_peer_line(exc, ctx, rundir) if ctx.distributed else None
                distributed.teardown(ctx, clean=False)
                if lost is not None:
                    raise elastic.PeerLost(lost) from None
                raise
            distributed.teardown(ctx, clean=True)
        return summary
    finally:
        rundir.release()


def _lost_peer_line(exc: BaseException, ctx: distributed.Context, rundir: RunDir) -> str | None:
    """The one line a survivor prints for a peer that died or stopped answering (who, and what
    happens next), or None when ``exc`` is not that (every other rank answers the roll call)."""
    if not distributed.is_peer_failure(exc):
        return None
    missing = distributed.roll_call(ctx)
    if missing == []:
        return None
    me = f"rank {ctx.rank} ({ctx.peers[ctx.rank][0]})"
    if missing is None:
        lost = "the rendezvous host (torchrun's store is unreachable)"
    else:
        lost = ", ".join(f"rank {r} ({ctx.peers[r][0]}, pid {ctx.peers[r][1]})" for r in missing)
    saved = (f"last.pt goes on at epoch {rundir.saved[0] + 1}, batch {rundir.saved[1] + 1}"
             if rundir.saved else "no last.pt yet: it starts again")
    return (f"{me}: lost {lost} ({distributed.transport_reason(exc)}); "
            f"{elastic.next_step()} ({saved})")


def run(job: Job, ctx: distributed.Context, rundir: RunDir, stop: elastic.StopSignal | None = None,
        auto_resume: bool = False) -> dict:
    """Setup → resume → for each epoch, for each batch: attack, step, log; evaluate;
    checkpoint → the final report."""
    cfg, device = job.cfg, ctx.device

    # ---- model, optimizer, schedule, method
    raw = job.model
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    optimizer = make_optimizer(cfg, raw, job.optimizer)
    steps_per_epoch = job.train.steps_per_epoch(cfg.batch_size)
    sched = scheduler(optimizer, cfg.schedule,
                      cfg.epochs * steps_per_epoch * method_class(cfg).steps_per_batch(cfg))
    model = raw
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    attack_model = raw
    if cfg.compile:
        model = torch.compile(model)
        attack_model = model if not ctx.distributed else torch.compile(raw)
    awp = WeightPerturbation(raw, cfg.awp, ctx, cfg.compile) if cfg.awp else None
    method = make_method(cfg, model, attack_model, device, awp)
    ema = WeightAverage(raw, cfg.ema) if cfg.ema else None
    ema_eval = None if ema is None else torch.compile(ema.module) if cfg.compile else ema.module

    # ---- resume, or start the run directory
    resume = rundir.claim(ctx, cfg, auto_resume)
    progress, meter = Progress(), EpochMeter()
    ckpt = rundir.checkpoint_to_resume(cfg, ctx, job.fingerprint, resume)
    if ckpt is not None:
        progress = _restore(ckpt, job, ctx, rundir, raw, optimizer, sched, method, meter,
                            steps_per_epoch, ema)
    else:
        if ctx.is_main:
            rundir.start({**cfg.to_dict(), "world_size": ctx.world_size,
                          "model_args": job.model_args, "data_fingerprint": job.fingerprint,
                          "torchelastic_run_id": run_id(), **job.extra_config})
        torch.manual_seed(cfg.seed * 1_000_003 + ctx.rank)  # per-rank attack/augment noise
    distributed.barrier(ctx)
    if ctx.is_main:
        print(first_line(job, ctx))

    # ---- epochs
    def checkpoint(path):
        save_checkpoint(path, ctx, job, raw, optimizer, sched, progress, meter, method, ema)
        if path == rundir.last:
            rundir.saved = (progress.epoch, progress.step_in_epoch)

    vote = elastic.StopVote(stop or elastic.StopSignal(), ctx.distributed, device)
    local_batch = cfg.batch_size // ctx.world_size
    chance = chance_accuracy(job.train.labels(cfg.eval_examples))
    ramp_steps = cfg.eps_warmup * steps_per_epoch
    guard = DivergenceGuard(cfg, ctx, rundir, steps_per_epoch,
                            own_optimizer=job.optimizer is not None
                            and not isinstance(job.optimizer, str))
    for epoch in range(progress.epoch, cfg.epochs):
        why = _strict_stop(progress.history) if cfg.strict else None
        if why is not None:
            if ctx.is_main:
                print(f"--strict: {why}; stopping after epoch {progress.epoch} of "
                      f"{cfg.epochs}", file=sys.stderr)
            break
        method.set_epoch(epoch)
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
            for loss, logits in method.losses(x, y):  # attack
                optimizer.zero_grad(set_to_none=True)  # step
                loss.backward()
                optimizer.step()
                method.after_step()  # AWP's perturbation off before anything reads the weights
                if ema is not None:
                    ema.update()
                sched.step()
                meter.add(loss, method.loss_parts, logits, y)  # log
                guard.note(loss, progress.global_step)
            meter.images += len(y)
            progress.step_in_epoch, progress.global_step = i + 1, progress.global_step + 1
            if not bar.disable and (bar.n % 10 == 0 or i + 1 == steps_per_epoch):  # syncs
                elapsed = meter.seconds + time.perf_counter() - started
                bar.set_postfix(loss=f"{float(meter.loss_sum) / meter.seen:.3f}",
                                acc=f"{float(meter.correct) / meter.seen:.1%}",
                                img_s=f"{meter.images * ctx.world_size / elapsed:.0f}")
            bar.update()
            if i + 1 == steps_per_epoch:
                continue  # the epoch's end saves, and settles a stop there
            stopping = vote.poll()  # every rank stops at the same boundary
            if stopping or cfg.save_every and progress.global_step % cfg.save_every == 0:
                _sync(device)
                meter.seconds += time.perf_counter() - started
                guard.check(raw)
                checkpoint(rundir.last)
                started = time.perf_counter()
            if stopping:
                bar.close()
                raise elastic.RunStopped(_stopped_line(rundir, epoch, i + 1, steps_per_epoch))
        _sync(device)
        meter.seconds += time.perf_counter() - started
        bar.close()
        guard.check(raw)  # nothing non-finite is evaluated, chosen as best or saved
        record = {"epoch": epoch + 1, "step": progress.global_step,
                  "lr": optimizer.param_groups[0]["lr"], **meter.record(ctx)}
        if cfg.eps_warmup:
            record["eps"] = method.eps  # the training ε of the epoch's last batch
        distributed.broadcast_buffers(ctx, raw)  # evaluate (and save) rank 0's BN statistics
        if ema is not None:
            distributed.broadcast_buffers(ctx, ema.module)

        # ---- evaluation, model selection
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            t0 = time.perf_counter()
            ev = lambda m, examples, split: clean_and_robust_accuracy(  # noqa: E731
                m, examples, cfg, ctx, cfg.precision, 4 * local_batch, split)
            # With --ema, the averaged weights are the model; the raw ones are shown beside.
            for prefix, m in (("", ema_eval), ("raw_", attack_model)) if ema else \
                    (("", attack_model),):
                record[f"{prefix}train_clean_acc"], record[f"{prefix}train_robust_acc"] = \
                    ev(m, job.train_eval, "train")
                record[f"{prefix}val_clean_acc"], record[f"{prefix}val_robust_acc"] = \
                    ev(m, job.val, "val")
            if method.single_step and method.eps == cfg.eps:  # not during an ε warm-up
                record["train_own_attack_acc"] = own_attack_accuracy(
                    method, job.train_eval, cfg, ctx, 4 * local_batch)
            record["eval_seconds"] = time.perf_counter() - t0
            score = record[method.selection_metric]
            if score > progress.best_score:
                progress.best_score, progress.best_epoch = score, epoch + 1
                record["best"] = True
        warning = stall_warning(progress.history + [record], job.num_classes, chance, cfg)
        if warning:  # once per run: kept in the history, so also across a resume
            record["stall_warning"] = warning
        overfit = collapse_warning(progress.history + [record], cfg.method)
        if overfit:
            record["overfit_warning"] = overfit
        progress.history.append(record)
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        meter.reset()

        # ---- checkpoints: best.pt is committed only after last.pt (a kill in between
        # resumes this epoch's end from the previous last.pt, and the run directory settles
        # the pending one)
        if record.get("best"):
            checkpoint(rundir.pending)
        checkpoint(rundir.last)
        if ctx.is_main:
            if record.get("best"):
                rundir.commit_best()
            rundir.append_history(record)
            if not cfg.progress:
                print(epoch_line(record, cfg.epochs), flush=True)
            else:
                tqdm.write(epoch_line(record, cfg.epochs))
            for text in (warning, overfit):
                if text:
                    tqdm.write(f"warning: {text}", file=sys.stderr)
        if vote.settle() and epoch + 1 < cfg.epochs:  # the last one ends with the report
            raise elastic.RunStopped(_stopped_line(rundir, epoch, steps_per_epoch,
                                                   steps_per_epoch))
    _check_ranks_agree(ctx, raw)
    if ema is not None:
        _check_ranks_agree(ctx, ema.module)

    # ---- final report on the test set
    return final_report(job, ctx, rundir, progress.history, local_batch)


def _strict_stop(history: list[dict]) -> str | None:
    """Why --strict stops the run here (its history warned of it), or None."""
    for what, record in (("the training stalled", stalled_record(history)),
                         ("catastrophic overfitting", overfit_record(history))):
        if record is not None:
            return f"{what} (epoch {record['epoch']})"
    return None


def _stopped_line(rundir: RunDir, epoch: int, step: int, steps_per_epoch: int) -> str:
    where = (f"the end of epoch {epoch + 1}" if step == steps_per_epoch else
             f"epoch {epoch + 1}, batch {step} of {steps_per_epoch}")
    then = (elastic.next_step() if under_torchelastic() else
            "run the same command with --resume auto (or --resume) to continue")
    return f"stopped by SIGTERM at {where}; {rundir.last} holds it; {then}"


# --------------------------------------------------------------------------- setup and resume


def _restore(ckpt: dict, job: Job, ctx: distributed.Context, rundir: RunDir, raw, optimizer,
             sched, method, meter: EpochMeter, steps_per_epoch: int,
             ema: WeightAverage | None = None) -> Progress:
    """A resumed run's state from last.pt: weights (the raw and, with --ema, the averaged),
    optimizer, schedule, and, with the same number of ranks, every rank's RNG, method state
    and epoch sums; returns its progress."""
    try:
        unwrap(raw).load_state_dict(ckpt["raw_model"] if ema is not None else ckpt["model"])
        if ema is not None:
            ema.load(ckpt["model"], ckpt["ema"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainConfigError(f"{rundir.last}: its averaged weights cannot be restored "
                               f"({type(exc).__name__}: {exc})") from None
    except RuntimeError as exc:
        raise TrainConfigError(f"{rundir.last}: its weights do not fit this model ({exc})") \
            from None
    bad = non_finite_tensors(raw)
    if bad:  # written before fastadv stopped diverged runs, or by hand
        raise TrainConfigError(f"--resume: {rundir.last} holds non-finite weights "
                               f"({', '.join(bad[:3])}): there is nothing to continue; start "
                               "a new --out, or --overwrite this one")
    try:  # the file's checksum proves nothing about who wrote it: a crafted state is refused
        optimizer.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        progress = Progress(**ckpt["progress"])
        if ckpt["world_size"] == ctx.world_size:
            mine = ckpt["ranks"][ctx.rank]
            set_rng_state(mine["rng"])
            method.load_state(mine["method"])
            meter.load_state_dict(mine["meter"] if "meter" in mine else
                                  EpochMeter.positional_state(mine["sums"],
                                                              mine.get("part_sums", {})))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainConfigError(f"--resume: {rundir.last} holds a training state fastadv cannot "
                               f"restore ({type(exc).__name__}: {exc}): it was edited or is "
                               "damaged; resume from an intact copy, or start a new --out") \
            from None
    if ckpt["world_size"] != ctx.world_size:
        if progress.step_in_epoch:
            raise TrainConfigError(f"--resume: {rundir.last} was written mid-epoch by "
                                   f"{ckpt['world_size']} ranks; resume it with as many")
        torch.manual_seed(job.cfg.seed * 1_000_003 + progress.epoch * 1009 + ctx.rank)
    rundir.saved = (progress.epoch, progress.step_in_epoch)
    if ctx.is_main:
        rundir.write_history(progress.history)
        print(f"resuming {rundir.out} at epoch {progress.epoch + 1}, batch "
              f"{progress.step_in_epoch + 1} of {steps_per_epoch}")
    return progress


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


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, ctx, job: Job, raw, optimizer, sched, progress: Progress,
                    meter: EpochMeter, method, ema: WeightAverage | None = None):
    """Gathers every rank's RNG state, epoch sums and method state; rank 0 writes. With
    --ema, ``model`` holds the averaged weights (what evaluation and fastadv.eval load) and
    ``raw_model`` the trained ones."""
    per_rank = {"rng": rng_state(), "method": method.state(), "meter": meter.state_dict()}
    ranks = distributed.gather_to_main(ctx, per_rank)
    if ctx.is_main:
        save_checked({
            "format": FORMAT, "config": job.cfg.to_dict(), "model_args": job.model_args,
            "model": _plain_state_dict(raw if ema is None else ema.module),
            "raw_model": None if ema is None else _plain_state_dict(raw),
            "ema": None if ema is None else ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": sched.state_dict(), "scaler": None,  # bf16 needs no loss scaling
            "progress": progress.state_dict(), "ranks": ranks, "world_size": ctx.world_size,
            "torch": str(torch.__version__), "data_fingerprint": job.fingerprint,
        }, path)
    distributed.barrier(ctx)


def _plain_state_dict(model: nn.Module) -> dict:
    """The weights under the names a freshly built model uses (no DDP/compile prefixes)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(unwrap(model)).state_dict().items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_ranks_agree(ctx: distributed.Context, raw: nn.Module) -> None:
    """DDP keeps every rank's weights identical; a cheap check that it did (every rank
    raises, so none is left waiting in a collective)."""
    if not ctx.distributed:
        return
    total = sum(p.detach().double().sum().item() for p in raw.parameters())
    sums = distributed.all_gather(ctx, total)
    if len(set(sums)) != 1:
        raise RuntimeError(f"ranks ended with different weights (parameter sums {sums})")
