"""torchattacks-style attack objects: ``atk = fastadv.PGD(model, eps=8/255); atk(x, y)``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import Normalized
from .pgd import pgd


class PGD:
    """PGD as a callable object, for code written against ``torchattacks.PGD``.

    ``atk = fastadv.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True,
    restarts=1)``; ``x_adv = atk(images, labels)`` with images in [0, 1]. For a model that
    expects normalised inputs, give ``mean``/``std`` (or call ``set_normalization_used``):
    the attack then runs in [0, 1] pixel space and normalises before the model. Any other
    keyword of :func:`fastadv.pgd` (``norm``, ``loss``, ``precision``, ``early_stop``,
    ``cuda_graph``, ...) is passed through.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, random_start: bool = True, restarts: int = 1,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **options):
        self.model = model
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.random_start, self.restarts = random_start, restarts
        self.options = options
        self._target = model
        if mean is not None or std is not None:
            self.set_normalization_used(mean, std)

    def set_normalization_used(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if mean is None or std is None or len(mean) != len(std):
            raise ValueError("mean and std must both be given, one value per channel")
        self._target = Normalized(self.model, mean, std)
        param = next(self.model.parameters(), None)
        if param is not None:
            self._target.to(param.device)

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.forward(images, labels)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return pgd(self._target, images, labels, eps=self.eps, alpha=self.alpha,
                   steps=self.steps, restarts=self.restarts, random_start=self.random_start,
                   **self.options)

    def __repr__(self) -> str:
        return (f"fastadv.PGD(eps={self.eps:g}, alpha={self.alpha:g}, steps={self.steps}, "
                f"random_start={self.random_start}, restarts={self.restarts})")
