"""Robustness evaluation: ``python -m fastadv.eval --checkpoint RUN/best.pt`` and
``fastadv.evaluate(model, x, y, eps=...)``.

Robust accuracy is the per-example worst case over fastadv's PGD (early-stopped restarts)
and FGSM and, with ``pip install "fastadv[eval]"``, torchattacks' AutoAttack (standard) and
Square; a sanity report says whether the attacks were strong enough to trust it (Madry et
al.: evaluation with weak attacks gives false security), and an accuracy-vs-ε curve shows
where it collapses. torchattacks and matplotlib are imported only when used.
"""

from ..accuracy import clean_and_pgd_correct
from .attacks import ATTACKS, AttackSettings, MissingDependency
from .evaluation import DEFAULT_ATTACKS, evaluate
from .report import AttackResult, Check, EvalReport

__all__ = ["ATTACKS", "AttackResult", "AttackSettings", "Check", "DEFAULT_ATTACKS", "EvalReport",
           "MissingDependency", "clean_and_pgd_correct", "evaluate"]
