"""What one training run works on: the model (with how to rebuild it from a checkpoint) and
its data sources (train, a fixed training subset for train accuracy, validation, test).
``job_from_config`` builds it for the command line (built-in datasets as tensors on the
device; ``folder:PATH`` streamed); ``fastadv.fit`` builds it from the caller's objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import folder as folder_data
from ..data import load_run_dataset
from ..data.folder_sources import folder_sources
from ..data.sources import StreamedEval, StreamedTrain, TensorEval, TensorTrain
from ..data.splits import check_batch_size, split_indices
from ..model_specs import ModelSpecError, check_model_output, is_model_spec
from ..models import build_model
from . import distributed
from .config import TrainConfig, TrainConfigError

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
    val, train = split_indices(len(data.y_train), cfg.val_size, cfg.seed)
    check_batch_size(cfg.batch_size, len(train))
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
    data = folder_sources(cfg.dataset, image_size=cfg.image_size, augment=cfg.augment,
                          workers=cfg.workers, seed=cfg.seed, val_size=cfg.val_size,
                          eval_examples=cfg.eval_examples, batch_size=cfg.batch_size)
    model, args = _model(cfg, len(data.splits.classes), 3, cfg.image_size, IMAGENET_MEAN,
                         IMAGENET_STD, ctx.device)
    return Job(cfg, model, args, len(data.splits.classes), train=data.train,
               train_eval=data.train_eval, val=data.val, test=data.test,
               describe=data.describe, fingerprint=data.splits.fingerprint,
               extra_config={"classes": list(data.splits.classes)},
               val_held_out=data.splits.val is None or data.splits.test is None)


def _model(cfg: TrainConfig, num_classes: int, channels: int, size: int, mean, std,
           device: torch.device) -> tuple[nn.Module, dict]:
    torch.manual_seed(cfg.seed)
    args = dict(name=cfg.model, num_classes=num_classes, in_channels=channels, image_size=size,
                mean=tuple(mean), std=tuple(std), width=cfg.width)
    try:
        model = build_model(**args, pretrained=cfg.pretrained)
        if is_model_spec(cfg.model):
            check_model_output(model, in_channels=channels, image_size=size,
                               num_classes=num_classes, what=f"--model {cfg.model}")
    except ModelSpecError as exc:
        raise TrainConfigError(str(exc)) from None
    except ValueError as exc:  # an architecture that does not fit the data's shape
        raise TrainConfigError(f"--model {cfg.model}: {exc}") from None
    return model.to(device), args
