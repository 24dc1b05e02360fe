"""``fastadv.fit``: adversarial training of the caller's own model on the caller's own data,
through the same loop as ``python -m fastadv.train`` (the same checkpoints, exact resume,
evaluation, DDP under torchrun, bf16/channels_last/compile)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from ..checkpoint import load_checkpoint
from ..data.sources import StreamedEval, StreamedTrain, TensorEval, TensorTrain
from ..data.splits import check_batch_size, split_indices
from ..model_specs import ModelSpecError, check_model_output
from ..nn import Normalized
from . import distributed
from .config import (FIT_PREFIX, ONE_STEP, OPTIMIZERS, SETTINGS, USER_MODEL, TrainConfig,
                     TrainConfigError, default_alpha)
from .job import Job
from .loop import launch
from .rundir import RunDir

# Tensors are kept on a CUDA device when they take at most this share of its free memory.
DEVICE_SHARE = 0.5


@dataclass
class FitResult:
    """What :func:`fit` returns: the epoch records (``metrics.jsonl``), the final report
    (``results.json``), and the best checkpoint's model (by validation robust accuracy), in
    eval mode on the run's device."""

    history: list
    summary: dict
    model: nn.Module
    out: str


def fit(model: nn.Module, train_data, *, eps: float, epochs: int,
        alpha: float | None = None, steps: int = 10, method: str = "pgd", restarts: int = 1,
        val_data=None, test_data=None, val_size: int | None = None, batch_size: int = 128,
        optimizer=None, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
        schedule: str = "piecewise", precision: str = "fp32", channels_last: bool = False,
        compile: bool = False, cuda_graph: bool = False, device: str | None = None,
        seed: int = 0, out: str = "runs/fit", resume: bool | str = False,
        overwrite: bool = False, dist_timeout: int = 600,
        eval_every: int = 1,
        eval_steps: int | None = None, eval_examples: int = 1000, eps_warmup: int = 0,
        strict: bool = False, save_every: int = 0, free_replays: int = 4,
        trades_beta: float = 6.0, mart_beta: float = 6.0, nfgsm_noise: float = 2.0,
        nfgsm_clip: float | None = None, label_smoothing: float = 0.0,
        ema: float | None = None, awp: float | None = None, awp_warmup: int = 10,
        attack_bn: str = "eval", sync_bn: bool = False,
        augment: bool = False, workers: int = 0, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, progress: bool = True) -> FitResult:
    r"""Adversarial training (Madry et al.) of ``model``:
    :math:`\min_\theta \mathbb{E}\,\max_{\|\delta\|_\infty \le \epsilon} L(f_\theta(x+\delta), y)`,
    the inner max by PGD-``steps`` (step ``alpha``, default 2.5ε/steps) from a random start.

    Args:
        model: any ``nn.Module`` mapping images ``[B, C, H, W]`` in [0, 1] to logits
            ``[B, num_classes]``. Normalisation is the model's business, or pass
            ``mean``/``std`` (per channel) and the model is wrapped to apply it.
        train_data, val_data, test_data: a pair of tensors ``(x [N, C, H, W] float in [0, 1],
            y [N] int)``, a map-style ``Dataset`` returning ``(x, y)``, or a ``DataLoader``
            over one. Tensors stay on the device when they fit (the fast path); the rest is
            streamed by a ``DataLoader`` (``workers`` processes, pinned memory, the next
            batch copied while the attack runs). Without ``val_data``, ``val_size`` examples
            (default 10 %, at most 1000) are held out of the training data for model
            selection; without ``test_data`` the final report is on that validation split.
        method: ``pgd``, ``fgsm``, ``fgsm-rs``, ``n-fgsm``, ``free``, ``trades``, ``mart`` or
            ``standard``.
        ema: keep an exponential moving average of the weights with this decay (e.g.
            0.995): validation, best.pt, the returned model and the report use it.
        awp: Wu et al.'s adversarial weight perturbation of size ``awp`` (e.g. 5e-3) for
            ``pgd``, ``trades`` and ``mart``, after ``awp_warmup`` epochs.
        optimizer: None (SGD with ``lr``, ``momentum``, ``weight_decay``), ``"sgd"``,
            ``"adam"``, an ``Optimizer`` over ``model``'s parameters, or a function from the
            parameters to one. ``schedule``: piecewise, cyclic, cosine or constant, per step.
        out: the run directory (``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``,
            ``results.json``); ``resume=True`` continues a killed run from its ``last.pt``
            exactly (the same weights as an uninterrupted run, on the CPU). A non-empty
            ``out`` that holds anything but a run killed before its first checkpoint is
            refused unless ``resume`` (an unfinished run) or ``overwrite=True`` (replace it).
            ``resume="auto"`` continues the run in ``out`` if it is this one and starts it
            otherwise (a script a scheduler requeues); under ``torchrun``, restarted
            workers do so by themselves. A SIGTERM stops at the next batch with ``last.pt``
            written and raises :class:`~fastadv.train.elastic.RunStopped`; a rank lost
            under torchrun raises :class:`~fastadv.train.elastic.PeerLost` (one line).
        augment: random crop (4 px) and flip per batch on the device, for tensors and for
            datasets without transforms of their own; a ``Dataset``'s own random transforms
            run in the workers, each item under its own seed (exact on resume).
        The rest are ``python -m fastadv.train``'s flags (``--help``).

    Returns:
        :class:`FitResult`: ``history``, ``summary``, ``model`` (best.pt's weights in a copy
        of ``model``, eval mode) and ``out``. Reload later with
        ``fastadv.load_weights(model, out + "/best.pt")``.

    Under ``torchrun`` every rank calls ``fit`` with the same arguments; each global batch
    is split across the ranks, which load only their part.
    """
    given = dict(locals())  # the keywords as passed, before any is changed below
    settings = {s.name: given[s.name] for s in FIT_SETTINGS}
    auto_resume = isinstance(resume, str) and resume == "auto"
    if auto_resume:  # the call is the run: resumed if out holds it
        settings["resume"] = False
        if overwrite:
            raise TrainConfigError("resume='auto' continues the run in out and overwrite "
                                   "replaces it: pass one of them")
    elif isinstance(resume, str):
        raise TrainConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise TrainConfigError("mean and std go together: pass both or neither")
        model = Normalized(model, mean, std)
    kind, _ = _kind(train_data, "train_data")
    steps_given = steps if method not in ONE_STEP else 1
    cfg = TrainConfig(**{
        **settings, "dataset": f"{FIT_PREFIX}{kind}",
        "model": f"{USER_MODEL}{type(model).__name__}>", "eps": float(eps), "steps": steps_given,
        "alpha": float(default_alpha(method, eps, steps_given) if alpha is None else alpha),
        "batch_size": _batch_size(train_data, batch_size),
        "optimizer": optimizer if isinstance(optimizer, str) else "sgd",
        "eval_steps": steps if eval_steps is None else eval_steps})
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise TrainConfigError(f"optimizer must be 'sgd', 'adam', an Optimizer or a factory, "
                               f"got {optimizer!r}")
    summary = launch(cfg, lambda ctx: _job(cfg, ctx, model, train_data, val_data, test_data,
                                           augment, optimizer), auto_resume)
    rundir = RunDir(out)
    last, best = rundir.last, rundir.best
    history = load_checkpoint(last)["progress"]["history"]
    trained = copy.deepcopy(model)
    trained.load_state_dict(load_checkpoint(best if os.path.exists(best) else last)["model"])
    return FitResult(history, summary, trained.eval(), out)


# The table's settings fit takes as keywords of its own name (a test keeps them in step).
FIT_SETTINGS = tuple(s for s in SETTINGS if s.in_fit)


def _kind(data, name: str) -> tuple[str, object]:
    """'tensors', 'Dataset' or 'DataLoader', checked (a clear error naming the argument)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        x, y = data
        if x.dim() != 4 or not x.is_floating_point():
            raise TrainConfigError(f"{name}: x must be a float tensor [N, C, H, W], got "
                                   f"{x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.is_floating_point() or len(y) != len(x):
            raise TrainConfigError(f"{name}: y must be integer labels [N] for the {len(x)} "
                                   f"images, got {y.dtype} {tuple(y.shape)}")
        return "tensors", data
    if isinstance(data, (tuple, list)):
        raise TrainConfigError(f"{name} must be a pair of tensors (x, y), a map-style Dataset "
                               f"or a DataLoader, got a {type(data).__name__} of "
                               f"{len(data)} items")
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise TrainConfigError(f"{name}: a DataLoader over an IterableDataset cannot be "
                                   "split, resumed or sharded; pass a map-style Dataset")
        if isinstance(data.sampler, DistributedSampler):
            raise TrainConfigError(f"{name}: pass the DataLoader without a "
                                   "DistributedSampler: fit splits each batch across ranks")
        if data.batch_size is None:
            raise TrainConfigError(f"{name}: a DataLoader with batch_size=None (a custom "
                                   "batch_sampler) is not supported; pass the Dataset")
        return "DataLoader", data
    if isinstance(data, IterableDataset):
        raise TrainConfigError(f"{name}: an IterableDataset cannot be split, resumed or "
                               "sharded; pass a map-style Dataset (with __getitem__/__len__)")
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return "Dataset", data
    raise TrainConfigError(f"{name} must be a pair of tensors (x, y), a map-style Dataset or "
                           f"a DataLoader, got {type(data).__name__}")


def _batch_size(data, given: int) -> int:
    """A DataLoader brings its own batch size."""
    return data.batch_size if isinstance(data, DataLoader) else given


def _fits_on(device: torch.device, tensors) -> bool:
    """Whether tensors can live on ``device``: already there, or taking at most DEVICE_SHARE
    of its free memory (tensors on another GPU are not streamed: workers cannot read them)."""
    if device.type != "cuda" or all(t.device == device for t in tensors):
        return True
    if any(t.device.type != "cpu" for t in tensors):
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= DEVICE_SHARE * free


def _check_range(x: Tensor, name: str) -> None:
    bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    if bad:  # min/max pass NaN by: NaN compares false
        raise TrainConfigError(f"{name}: {bad} of {x.numel()} pixel values are NaN or "
                               "infinite; images must be finite values in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise TrainConfigError(f"{name}: images must lie in [0, 1] (the attack's box), found "
                               f"values in [{lo:.3g}, {hi:.3g}]; pass unnormalised images and "
                               "let the model normalise (fit(..., mean=, std=))")


def _job(cfg: TrainConfig, ctx: distributed.Context, model, train_data, val_data, test_data,
         augment: bool, optimizer) -> Job:
    device = ctx.device
    kind, train_data = _kind(train_data, "train_data")
    # Held-out validation comes out of the training data when none is given.
    if val_data is None:
        if kind == "DataLoader":
            raise TrainConfigError("val_data is needed with a DataLoader as train_data (its "
                                   "examples cannot be held out); or pass its Dataset")
        val_idx, train_idx = split_indices(_length(kind, train_data), cfg.val_size, cfg.seed)
    else:
        val_idx, train_idx = None, None
    train = _train_source(cfg, kind, train_data, train_idx, augment, device)
    check_batch_size(cfg.batch_size, len(train))
    k = min(cfg.eval_examples, len(train))
    train_eval = _eval_source(cfg, kind, train_data,
                              train.indices[:k] if train.streamed else None, device,
                              tensors=(train.x[:k], train.y[:k]) if not train.streamed else None)
    if val_data is None:
        val = _eval_source(cfg, kind, train_data, val_idx, device)  # checked as train_data
    else:
        val = _eval_source(cfg, *_kind(val_data, "val_data"), None, device, name="val_data")
    test = None if test_data is None else _eval_source(cfg, *_kind(test_data, "test_data"),
                                                       None, device, name="test_data")
    num_classes = _num_classes(model, train, device)
    model = model.to(device)
    describe = (f"{'streamed' if train.streamed else 'in memory'}, "
                f"{len(train) + (len(val) if val_data is None else 0)} training examples")
    # What a resume must find the same (the batches, and what the weights were trained on).
    fingerprint = (f"{kind}, {len(train)} training, {len(val)} validation, "
                   f"{0 if test is None else len(test)} test examples, augment={augment}, "
                   f"normalisation {_normalisation(model)}")
    return Job(cfg, model, None, num_classes, train=train, train_eval=train_eval, val=val,
               test=test, describe=describe, fingerprint=fingerprint, optimizer=optimizer,
               val_held_out=val_data is None)


def _normalisation(model: nn.Module) -> str:
    normalize = getattr(model, "normalize", None)
    if normalize is None or not hasattr(normalize, "mean"):
        return "none"
    return (f"mean {[round(v, 6) for v in normalize.mean.flatten().tolist()]}, "
            f"std {[round(v, 6) for v in normalize.std.flatten().tolist()]}")


def _length(kind: str, data) -> int:
    return len(data[1]) if kind == "tensors" else len(data)


def _train_source(cfg, kind, data, indices, augment, device):
    if kind == "tensors":
        x, y = data
        _check_range(x, "train_data")
        if indices is not None:
            x, y = x[indices], y[indices]
        if _fits_on(device, (x, y)):
            return TensorTrain(x.to(device), y.to(device).long(), augment=augment)
        data, kind = torch.utils.data.TensorDataset(x, y), "Dataset"
        indices = None
    if kind == "DataLoader":
        loader = data
        return StreamedTrain(loader.dataset, workers=loader.num_workers,
                             collate_fn=loader.collate_fn, augment=augment,
                             batches_of_epoch=_loader_batches(loader, cfg.seed),
                             prefetch_factor=loader.prefetch_factor)
    _check_range(_first_image(data, "train_data"), "train_data")
    return StreamedTrain(data, indices, workers=cfg.workers, augment=augment)


def _first_image(dataset, name: str) -> Tensor:
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) >= 2
            and isinstance(item[0], Tensor) and item[0].dim() == 3):
        raise TrainConfigError(f"{name}: a Dataset item must be (image [C, H, W] float "
                               f"tensor, label), got {type(item).__name__}")
    return item[0]


def _eval_source(cfg, kind, data, indices, device, tensors=None, name=None):
    """``name``: the argument whose tensors' pixel range to check (None: checked already)."""
    if tensors is not None:
        return TensorEval(*tensors)
    if kind == "tensors":
        x, y = data
        if name is not None:
            _check_range(x, name)
        if indices is not None:
            x, y = x[indices], y[indices]
        if _fits_on(device, (x, y)):
            return TensorEval(x.to(device), y.to(device).long())
        data, indices = torch.utils.data.TensorDataset(x, y), None
    if kind == "DataLoader":
        return StreamedEval(data.dataset, indices, workers=data.num_workers,
                            collate_fn=data.collate_fn, seed=cfg.seed)
    return StreamedEval(data, indices, workers=cfg.workers, seed=cfg.seed)


def _loader_batches(loader: DataLoader, seed: int):
    """A user DataLoader's batches of an epoch, as lists of dataset indices: its own sampler
    drawn under a generator seeded by (seed, epoch) (repeatable on resume), the incomplete
    last batch dropped as on every path."""
    def batches(epoch: int) -> list[list[int]]:
        epoch_seed = seed * 1_000_003 + epoch
        generator = getattr(loader.sampler, "generator", None)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(epoch_seed)  # not the CUDA ones: training's
            if generator is not None:
                generator.manual_seed(epoch_seed)
            drawn = [list(b) for b in loader.batch_sampler]
        return [b for b in drawn if len(b) == loader.batch_size]

    return batches


def _num_classes(model: nn.Module, train, device) -> int:
    """The classes the model outputs, checked on a real training batch: [B, num_classes]
    logits with every training label below num_classes."""
    labels = train.labels(min(len(train), 10_000))
    if train.streamed:
        x0 = train.dataset[int(train.indices[0])][0]
    else:
        x0 = train.x[0]
    x0 = torch.as_tensor(x0)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x0[None].to(next(model.parameters(), x0).device))
    except Exception as exc:  # noqa: BLE001 - reported with the input shape
        raise TrainConfigError(f"fit(model=...): the model fails on a training batch "
                               f"{[1, *x0.shape]}: {type(exc).__name__}: {exc}") from None
    finally:
        model.train(was)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TrainConfigError(f"fit(model=...): the model must return logits [B, "
                               f"num_classes]; on a [1, {', '.join(map(str, x0.shape))}] "
                               f"batch it returned {shape}")
    num_classes = out.shape[1]
    top = int(labels.max()) if len(labels) else 0
    low = int(labels.min()) if len(labels) else 0
    if low < 0:
        raise TrainConfigError(f"train_data: labels must be class indices >= 0, found "
                               f"{int((labels < 0).sum())} negative (the lowest {low})")
    if top >= num_classes:
        raise TrainConfigError(f"fit(model=...): the model returns {num_classes} logits but "
                               f"the training labels reach {top}; build it with "
                               f"num_classes={top + 1}")
    try:
        if x0.shape[-1] == x0.shape[-2]:
            check_model_output(model, in_channels=x0.shape[0], image_size=x0.shape[-1],
                               num_classes=num_classes, what="fit(model=...)",
                               device=next(model.parameters(), x0).device)
    except ModelSpecError as exc:
        raise TrainConfigError(str(exc)) from None
    return num_classes


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Fills ``model`` (the caller's module, built as for :func:`fit`) with the weights of
    a fastadv checkpoint (``best.pt``/``last.pt``) and returns it in eval mode. A model
    ``fit`` wrapped with ``mean``/``std`` is filled through the same wrapping: pass
    ``fastadv.nn.Normalized(model, mean, std)``."""
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: its weights do not fit this model ({exc})") from None
    return model.eval()


__all__ = ["FitResult", "fit", "load_weights"]
