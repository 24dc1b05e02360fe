"""Recipes: named groups of training defaults from the papers, ``--recipe NAME``. A recipe
sits between the dataset's defaults and the flags typed: it overrides the first, and every
explicit flag overrides it. Its CIFAR-10 settings apply to ``cifar10`` and the CIFAR-shaped
``synthetic`` set; elsewhere only its method-level settings do, on the dataset's own model,
optimizer and epochs.

The results quoted are the papers' (or RobustBench's) on CIFAR-10 at ε = 8/255, with their
architectures; fastadv has not run CIFAR-10 to confirm them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CIFAR_LIKE = ("cifar10", "synthetic")


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    claim: str  # what the source reports on CIFAR-10
    settings: dict  # every dataset
    cifar10: dict = field(default_factory=dict)  # on top, for CIFAR-10-shaped data

    def for_dataset(self, dataset: str) -> dict:
        return {**self.settings, **(self.cifar10 if dataset in CIFAR_LIKE else {})}

    def describe(self) -> str:
        shown = lambda d: ", ".join(f"{k.replace('_', '-')}={v:g}" if isinstance(v, float)  # noqa: E731
                                    else f"{k.replace('_', '-')}={v}" for k, v in d.items())
        text = f"{self.name}: {self.source}. {shown(self.settings)}"
        if self.cifar10:
            text += f"; on cifar10 also {shown(self.cifar10)}"
        return f"{text}. Claimed on CIFAR-10: {self.claim}"


RECIPES = {r.name: r for r in (
    Recipe("madry", "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial "
           "Attacks",
           "50.0 % against PGD-7 and 45.8 % against PGD-20 (a 10x wide ResNet)",
           dict(method="pgd", restarts=1),
           dict(steps=7, weight_decay=2e-4, schedule="piecewise")),
    Recipe("rice", "Rice et al. 2020, Overfitting in adversarially robust deep learning "
           "(best.pt is the early stop: the epoch of best validation PGD accuracy)",
           "53.4 % AutoAttack (WRN-34-20, early stopped; RobustBench)",
           dict(method="pgd", steps=10, schedule="piecewise"),
           dict(epochs=200, lr=0.1, weight_decay=5e-4)),
    Recipe("wong-fast", "Wong et al. 2020, Fast is better than free (FGSM from a random "
           "start, step 1.25 eps, cyclic learning rate)",
           "43.2 % AutoAttack (PreActResNet-18, 15 epochs; RobustBench)",
           dict(method="fgsm-rs", schedule="cyclic"),
           dict(epochs=15, lr=0.2, weight_decay=5e-4)),
    Recipe("n-fgsm", "de Jorge et al. 2022, Make Some Noise (noise 2 eps, step eps, no "
           "projection)",
           "PGD-50-10 accuracy on par with PGD-2 training at eps 8/255, and no catastrophic "
           "overfitting up to eps 16/255 where FGSM-RS collapses (PreActResNet-18)",
           dict(method="n-fgsm", nfgsm_noise=2.0, schedule="cyclic"),
           dict(epochs=30, lr=0.2, weight_decay=5e-4)),
    Recipe("trades-awp", "Wu et al. 2020, Adversarial Weight Perturbation Helps Robust "
           "Generalization (TRADES, beta 6, with AWP gamma 5e-3 after 10 epochs)",
           "56.2 % AutoAttack (WRN-34-10; RobustBench)",
           dict(method="trades", trades_beta=6.0, awp=5e-3, awp_warmup=10),
           dict(epochs=200, lr=0.1, weight_decay=5e-4, schedule="piecewise")),
    Recipe("modern", "fastadv's combination of the above: PGD-AT with weight averaging "
           "(Gowal et al. 2020, Rebuffi et al. 2021) and AWP (Wu et al. 2020)",
           "not claimed by a paper as such; its parts add about 1-3 points each there",
           dict(method="pgd", ema=0.995, awp=5e-3, awp_warmup=10),
           dict(epochs=200, lr=0.1, weight_decay=5e-4, schedule="piecewise")),
)}
