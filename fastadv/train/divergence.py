"""A run whose loss or weights become NaN or infinite is stopped where it happens, before
anything non-finite is evaluated, chosen as the best model or saved: ``best.pt`` and
``last.pt`` only ever hold finite weights, and the error names the epoch and batch, the
likely cause and the last finite checkpoint.

On the CPU every batch's loss is checked at once (reading it costs nothing there). On a GPU
the first non-finite batch is recorded on the device, without a host sync, and read at the
points the loop syncs anyway (before a checkpoint, at the end of an epoch). Under DDP the
ranks decide together at those points, so none is left waiting in a collective.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checkpoint import checkpoint_state
from ..errors import TrainConfigError
from . import distributed


class TrainingDiverged(TrainConfigError):
    """The loss or the weights became non-finite. Nothing non-finite was saved."""


class DivergenceGuard:
    def __init__(self, cfg, ctx: distributed.Context, rundir, steps_per_epoch: int,
                 own_optimizer: bool = False):
        self.cfg, self.ctx, self.rundir = cfg, ctx, rundir
        self.own_optimizer = own_optimizer  # fit(optimizer=<Optimizer or factory>)
        self.steps_per_epoch = steps_per_epoch
        self.at_once = ctx.device.type == "cpu" and not ctx.distributed
        self.first_bad_step = None  # host-side: the global step of the first non-finite loss
        self.first_bad_value = None  # known on the CPU only
        self._device_first = None  # the same on the device (-1: none yet)

    def note(self, loss: torch.Tensor, global_step: int) -> None:
        """Records the loss of batch ``global_step`` (0-based, over the run); raises at once
        when it is non-finite and checking costs nothing (one CPU process)."""
        loss = loss.detach()
        if self.ctx.device.type == "cpu":
            if self.first_bad_step is None and not bool(torch.isfinite(loss)):
                self.first_bad_step, self.first_bad_value = global_step, float(loss)
                if self.at_once:
                    self.stop()
            return
        if self._device_first is None:
            self._device_first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        bad = ~torch.isfinite(loss) & (self._device_first < 0)
        self._device_first = torch.where(bad, global_step, self._device_first)

    def check(self, model: nn.Module) -> None:
        """At a point every rank reaches together (before a checkpoint, before the epoch's
        evaluation): stop, on every rank, if any rank saw a non-finite loss or holds
        non-finite weights (BatchNorm statistics are per rank between broadcasts)."""
        if self._device_first is not None and self.first_bad_step is None:
            step = int(self._device_first)
            if step >= 0:
                self.first_bad_step = step
        mine = (self.first_bad_step, self.first_bad_value, non_finite_tensors(model))
        seen = distributed.all_gather(self.ctx, mine)
        losses = [(step, value) for step, value, _ in seen if step is not None]
        if losses:
            self.first_bad_step, self.first_bad_value = min(losses, key=lambda s: s[0])
            self.stop()
        weights = sorted({name for _, _, names in seen for name in names})
        if weights:
            self.stop(weights=weights)

    def stop(self, weights: list[str] | None = None) -> None:
        cfg = self.cfg
        if weights is None:
            epoch, batch = divmod(self.first_bad_step, self.steps_per_epoch)
            v = self.first_bad_value
            value = "non-finite" if v is None else "NaN" if math.isnan(v) else "infinite"
            what = (f"the training loss became {value} at epoch {epoch + 1}, batch "
                    f"{batch + 1} of {self.steps_per_epoch}")
        else:
            shown = ", ".join(weights[:3]) + (f" and {len(weights) - 3} more"
                                              if len(weights) > 3 else "")
            what = f"the weights became non-finite ({shown})"
        causes = ["a learning rate too high for this model (your optimizer's): lower it"
                  if self.own_optimizer else
                  f"a learning rate too high for this model (--lr {cfg.lr:g}, --optimizer "
                  f"{cfg.optimizer}): lower it"]
        if cfg.precision != "fp32":
            causes.append(f"--precision {cfg.precision} overflowing: try fp32")
        causes.append("non-finite values in the data")
        last = checkpoint_state(self.rundir.last)
        kept = ("no checkpoint was written before it" if last == "not written yet" else
                f"the last finite checkpoint is {self.rundir.last} ({last})")
        raise TrainingDiverged(f"training diverged: {what}; likely cause: "
                               f"{'; or '.join(causes)}. Stopped without saving anything "
                               f"non-finite: {kept}")


def non_finite_tensors(model: nn.Module) -> list[str]:
    """The names of the model's floating-point parameters and buffers (BatchNorm statistics)
    that hold a NaN or an infinity (one host sync for all of them)."""
    named = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]
