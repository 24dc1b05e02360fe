"""Adversarial weight perturbation (Wu et al. 2020, "Adversarial Weight Perturbation Helps
Robust Generalization"): each step's loss is taken at weights moved up the adversarial loss,
which flattens the robust loss landscape in weight space.

Per step: a proxy copy of the model takes one SGD step (lr 0.01, as Wu et al.) *up* the
method's own training loss at the batch's adversarial points; per weight tensor ``w`` (those
with more than one dimension: no biases, no BatchNorm), the perturbation is
:math:`v = \\frac{\\|w\\|}{\\|w' - w\\|}(w' - w)` and the model trains at
:math:`w + \\gamma v`; after the optimizer's step the same :math:`\\gamma v` is taken off.
Under DDP the proxy's gradient is averaged over ranks, so every rank moves its weights
alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import distributed

PROXY_LR = 0.01  # Wu et al.'s proxy step


class WeightPerturbation:
    def __init__(self, model: nn.Module, gamma: float, ctx: distributed.Context,
                 compile: bool = False):
        self.model, self.gamma, self.ctx = model, gamma, ctx
        self.proxy = copy.deepcopy(model)
        self.proxy_forward = torch.compile(self.proxy) if compile else self.proxy
        self.proxy_optimizer = torch.optim.SGD(self.proxy.parameters(), lr=PROXY_LR)
        self._moved: list[tuple[Tensor, Tensor]] = []

    def perturb(self, loss_of: Callable[[nn.Module], Tensor]) -> None:
        """Move the model's weights by γ·v, v from one proxy step up ``loss_of(proxy)``."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        self.proxy_optimizer.zero_grad(set_to_none=True)
        (-loss_of(self.proxy_forward)).backward()
        distributed.average_gradients(self.ctx, list(self.proxy.parameters()))
        self.proxy_optimizer.step()
        moved = []
        with torch.no_grad():
            for w, w_proxy in zip(self.model.parameters(), self.proxy.parameters()):
                if w.dim() <= 1:
                    continue
                diff = w_proxy - w
                v = diff * (w.norm() / (diff.norm() + 1e-20))
                w.add_(v, alpha=self.gamma)
                moved.append((w, v))
        self._moved = moved

    def restore(self) -> None:
        """Take the perturbation off again (after the optimizer stepped at it)."""
        with torch.no_grad():
            for w, v in self._moved:
                w.sub_(v, alpha=self.gamma)
        self._moved = []
