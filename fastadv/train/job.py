"""What one training run works on: the model (with how to rebuild it from a checkpoint) and
its data sources (train, a fixed training subset for train accuracy, validation, test).
``job_from_config`` builds it for the command line (built-in datasets as tensors on the
device; ``folder:PATH`` streamed); ``fastadv.fit`` builds it from the caller's objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data import folder as folder_data
from ..data import load_run_dataset
from ..models import build_model
from . import distributed
from .config import TrainConfig, TrainConfigError, validation_size
from .sources import StreamedEval, StreamedTrain, TensorEval, TensorTrain

# Torchvision/timm models (ImageNet-trained when --pretrained) normalise as on ImageNet.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Job:
    cfg: TrainConfig
    model: nn.Module  # on the run's device, unwrapped
    model_args: dict | None  # build_model(**model_args) rebuilds it; None: weights only
    num_classes: int
    train: TensorTrain | StreamedTrain
    train_eval: TensorEval | StreamedEval  # a fixed training subset, without augmentation
    val: TensorEval | StreamedEval
    test: TensorEval | StreamedEval | None  # None: the final report is on validation
    describe: str  # the data, for the run's first line
    fingerprint: str | None = None  # of the data's contents; a resume must see the same
    optimizer: object = None  # fit(optimizer=...): an Optimizer or a factory of one
    extra_config: dict = field(default_factory=dict)  # recorded in config.json
    val_held_out: bool = True  # validation drawn out of the training data (else given)


def split_indices(n: int, cfg: TrainConfig, held_out: int = 1) -> list[Tensor]:
    """``held_out`` validation-sized parts of ``range(n)`` and the rest (train, last), drawn
    by the run's seed: model selection never sees the test set."""
    size = validation_size(cfg, n)
    if size * held_out >= n:
        raise TrainConfigError(f"--val-size {size} leaves no training data ({n} examples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    parts = [order[i * size:(i + 1) * size] for i in range(held_out)]
    return parts + [order[held_out * size:]]


def check_batch_size(cfg: TrainConfig, n_train: int) -> None:
    if cfg.batch_size > n_train:
        raise TrainConfigError(f"--batch-size {cfg.batch_size} exceeds the {n_train} "
                               "training examples")


def job_from_config(cfg: TrainConfig, ctx: distributed.Context) -> Job:
    """The model and data ``python -m fastadv.train`` runs for ``cfg``."""
    if folder_data.is_folder_name(cfg.dataset):
        return _folder_job(cfg, ctx)
    return _tensor_job(cfg, ctx)


def _tensor_job(cfg: TrainConfig, ctx: distributed.Context) -> Job:
    device = ctx.device
    data = load_run_dataset(cfg.to_dict(), download=cfg.download)
    if data.shape[1] != data.shape[2]:
        raise TrainConfigError(f"{cfg.dataset}: images are {data.shape[1]}x{data.shape[2]}; "
                               "the trainer's models take square images")
    val, train = split_indices(len(data.y_train), cfg)
    check_batch_size(cfg, len(train))
    to = lambda t: t.to(device)  # noqa: E731
    x_train, y_train = to(data.x_train[train]), to(data.y_train[train])
    k = min(cfg.eval_examples, len(train))
    c, h, _ = data.shape
    model, args = _model(cfg, data.num_classes, c, h, tuple(data.mean), tuple(data.std), device)
    return Job(cfg, model, args, data.num_classes,
               train=TensorTrain(x_train, y_train, augment=data.augment),
               train_eval=TensorEval(x_train[:k], y_train[:k]),
               val=TensorEval(to(data.x_train[val]), to(data.y_train[val])),
               test=TensorEval(to(data.x_test), to(data.y_test)),
               describe=f"{len(val) + len(train)} training examples ({len(data.y_test)} test)")


def _folder_job(cfg: TrainConfig, ctx: distributed.Context) -> Job:
    """An image folder, decoded in --workers processes: train/ (minus held-out parts), and
    val/ and test/ when present."""
    data = folder_sources(cfg)
    model, args = _model(cfg, len(data.splits.classes), 3, cfg.image_size, IMAGENET_MEAN,
                         IMAGENET_STD, ctx.device)
    return Job(cfg, model, args, len(data.splits.classes), train=data.train,
               train_eval=data.train_eval, val=data.val, test=data.test,
               describe=data.describe, fingerprint=data.splits.fingerprint,
               extra_config={"classes": list(data.splits.classes)},
               val_held_out=data.splits.val is None or data.splits.test is None)


@dataclass
class FolderSources:
    splits: object  # fastadv.data.folder.FolderSplits
    train: StreamedTrain
    train_eval: StreamedEval
    val: StreamedEval
    test: StreamedEval
    describe: str


def folder_sources(cfg: TrainConfig) -> FolderSources:
    """The splits of ``folder:PATH`` a run with ``cfg`` uses: train/ minus what is held out;
    validation from val/ when test/ exists too, else held out of train/; test from test/,
    else val/, else held out of train/ (the held-out parts drawn by --seed, each the size of
    --val-size's default)."""
    try:
        splits = folder_data.scan_folder(folder_data.folder_path(cfg.dataset))
    except ImportError as exc:
        raise TrainConfigError(str(exc)) from None
    root, size = splits.root, cfg.image_size
    augment = cfg.augment or folder_data.default_augment(size)
    train_files = folder_data.ImageFiles(root, splits.train,
                                         folder_data.train_transform(size, augment))
    plain_train = folder_data.ImageFiles(root, splits.train, folder_data.eval_transform(size))
    given = [s for s in (splits.val, splits.test) if s is not None]
    parts = split_indices(len(splits.train), cfg, held_out=2 - len(given))
    train = parts[-1]
    check_batch_size(cfg, len(train))
    held = [StreamedEval(plain_train, p, workers=cfg.workers, seed=cfg.seed) for p in parts[:-1]]
    files = [StreamedEval(folder_data.ImageFiles(root, s, folder_data.eval_transform(size)),
                          workers=cfg.workers, seed=cfg.seed) for s in given]
    val, test = (files if len(files) == 2 else held + files)  # held-out validation first
    k = min(cfg.eval_examples, len(train))
    label_of = lambda i: splits.train[i][1]  # noqa: E731
    origin = lambda name, s: (f"{name}/ ({len(s)})" if s is not None else None)  # noqa: E731
    test_from = origin("test", splits.test) or origin("val", splits.val) or "held out of train/"
    val_from = "val/" if len(files) == 2 else "held out of train/"
    describe = (f"{folder_data.summary_line(splits)}; validation from {val_from}, test from "
                f"{test_from}; {size}x{size} images, augmentation {augment}, "
                f"{cfg.workers} loader workers")
    return FolderSources(
        splits, StreamedTrain(train_files, train, workers=cfg.workers, label_of=label_of),
        StreamedEval(plain_train, train[:k], workers=cfg.workers, seed=cfg.seed),
        val, test, describe)


def _model(cfg: TrainConfig, num_classes: int, channels: int, size: int, mean, std,
           device: torch.device) -> tuple[nn.Module, dict]:
    torch.manual_seed(cfg.seed)
    args = dict(name=cfg.model, num_classes=num_classes, in_channels=channels, image_size=size,
                mean=tuple(mean), std=tuple(std), width=cfg.width)
    from ..model_specs import ModelSpecError, build_from_spec, check_model_output, is_model_spec

    try:
        if is_model_spec(cfg.model):
            model = build_from_spec(cfg.model, num_classes=num_classes, in_channels=channels,
                                    mean=mean, std=std, pretrained=cfg.pretrained)
            check_model_output(model, in_channels=channels, image_size=size,
                               num_classes=num_classes, what=f"--model {cfg.model}")
        else:
            model = build_model(**args)
    except ModelSpecError as exc:
        raise TrainConfigError(str(exc)) from None
    except ValueError as exc:  # an architecture that does not fit the data's shape
        raise TrainConfigError(f"--model {cfg.model}: {exc}") from None
    return model.to(device), args
