"""Where a run is (:class:`Progress`) and the running sums of the epoch in progress
(:class:`EpochMeter`), each saved in checkpoints by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from . import distributed


@dataclass
class Progress:
    """Where the run is: what a checkpoint records besides the weights and the meter."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch completed
    global_step: int = 0  # batches completed overall
    best_score: float = -math.inf
    best_epoch: int | None = None
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)


class EpochMeter:
    """This rank's running sums over the epoch in progress: the loss, the method's named loss
    terms (TRADES: CE and KL), correct predictions, losses counted (free AT: every replay),
    examples trained on and training seconds. Sums stay on the device during the epoch (no
    host sync per step), in fp64 over a long epoch."""

    FIELDS = ("loss_sum", "part_sums", "correct", "seen", "images", "seconds")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.correct, self.seen = 0.0, 0.0, 0.0
        self.part_sums: dict = {}
        self.images, self.seconds = 0.0, 0.0

    @torch.no_grad()
    def add(self, loss: Tensor, parts: dict, logits: Tensor, y: Tensor) -> None:
        """One optimizer step's loss, loss terms and predictions on ``y``."""
        self.loss_sum += loss.detach().double() * len(y)
        for name, part in parts.items():
            self.part_sums[name] = self.part_sums.get(name, 0.0) + part.detach().double() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def to_floats(self) -> None:
        """Device sums to Python floats (a host sync): before saving or reporting."""
        for name in ("loss_sum", "correct"):
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, float(value))
        self.part_sums = {k: float(v) for k, v in self.part_sums.items()}

    def state_dict(self) -> dict:
        self.to_floats()
        return {name: (dict(self.part_sums) if name == "part_sums" else getattr(self, name))
                for name in self.FIELDS}

    def load_state_dict(self, state: dict) -> None:
        for name in self.FIELDS:
            setattr(self, name, dict(state[name]) if name == "part_sums" else state[name])

    @staticmethod
    def positional_state(sums: list, part_sums: dict) -> dict:
        """The state of a checkpoint written before the sums were named."""
        return {**dict(zip(("loss_sum", "correct", "seen", "images", "seconds"), sums)),
                "part_sums": part_sums}

    def record(self, ctx: distributed.Context) -> dict:
        """The epoch's training figures, summed over ranks: loss, batch accuracy, throughput,
        seconds and the loss terms."""
        self.to_floats()
        loss_sum, correct, seen, images = distributed.all_sum(
            ctx, [self.loss_sum, self.correct, self.seen, self.images])
        seconds = max(distributed.all_sum(ctx, [self.seconds])[0] / ctx.world_size, 1e-9)
        part_names = sorted(self.part_sums)  # the same on every rank (the same method)
        part_sums = (distributed.all_sum(ctx, [self.part_sums[n] for n in part_names])
                     if part_names else [])
        record = {"loss": loss_sum / seen, "batch_acc": correct / seen,
                  "images_per_s": images / seconds, "seconds": seconds}
        if part_names:
            record["loss_parts"] = {n: v / seen for n, v in zip(part_names, part_sums)}
        return record
