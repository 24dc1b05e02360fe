"""Attacks built on the fused ops: PGD (batched restarts, early stop, CE/CW/DLR, targeted,
l-inf and l2), FGSM and FGSM-RS, as functions and as torchattacks-style objects."""

from .classes import PGD
from .graphed import GraphedPGD
from .losses import LOSSES
from .core import attack_mode
from .pgd import AttackInfo, fgsm, fgsm_rs, pgd

__all__ = ["AttackInfo", "GraphedPGD", "LOSSES", "PGD", "attack_mode", "fgsm", "fgsm_rs", "pgd"]
