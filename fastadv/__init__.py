"""fastadv: fast, trustworthy adversarial training and evaluation (Madry et al.).

Attacks: ``pgd``, ``fgsm``, ``fgsm_rs``, ``PGD`` (torchattacks-style), ``GraphedPGD``.
Training: ``python -m fastadv.train`` (``fastadv.train.train``), or ``fit(model, data, ...)``
for one's own model and data; ``load_model`` reads their checkpoints back (``load_weights``
into one's own module). Evaluation: ``python -m fastadv.eval`` and ``evaluate`` (worst case over
PGD, FGSM, AutoAttack and Square, with a gradient-masking sanity report).
The fused PGD ops (``pgd_``, ``pgd_step``, ``random_init_``, ``keep_best_``, and the
perturbation form ``pgd_delta_``, ``pgd_delta_step``, ``random_delta_``) run on Triton, CUDA
C++ or CPU C++ kernels where available and on a PyTorch reference otherwise;
``python -m fastadv.info`` tells which.
"""

from . import backends
from ._version import __version__
from .attacks import PGD, AttackInfo, GraphedPGD, fgsm, fgsm_rs, pgd
from .checkpoint import load_model
from .eval import evaluate
from .ops import (keep_best_, pgd_, pgd_delta_, pgd_delta_step, pgd_step, random_delta_,
                  random_init_)
from .train.fit import FitResult, fit, load_weights


__all__ = [
    "__version__", "PGD", "AttackInfo", "FitResult", "GraphedPGD", "backends", "evaluate", "fgsm", "fgsm_rs",
    "fit", "keep_best_", "load_model", "load_weights", "pgd", "pgd_", "pgd_delta_", "pgd_delta_step",
    "pgd_step", "random_delta_", "random_init_",
]
