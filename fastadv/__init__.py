"""fastadv: fast, trustworthy adversarial training and evaluation (Madry et al.).

The fused PGD ops (``pgd_``, ``pgd_step``, ``random_init_``, ``keep_best_``) run on Triton,
CUDA C++ or CPU C++ kernels where available and on a PyTorch reference otherwise;
``python -m fastadv.info`` tells which.
"""

from . import backends
from .ops import keep_best_, pgd_, pgd_step, random_init_

__version__ = "0.1.0"

__all__ = ["backends", "keep_best_", "pgd_", "pgd_step", "random_init_"]
