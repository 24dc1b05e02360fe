"""Triton kernels of fastadv's ops (installed as ``fastadv.kernels``).

Each launcher takes the same arguments as the matching C++ kernel op in csrc/fastadv.cpp,
so the op layer (fastadv/ops.py) calls either backend the same way. No argument checking
here: the op layer has done it. Under ``TRITON_INTERPRET=1`` they run on CPU tensors.
"""

import triton  # noqa: F401  (ImportError here tells the op layer Triton is unavailable)

from .keep_best import keep_best
from .pgd_step import l2_step, linf_step
from .random_init import random_init

__all__ = ["keep_best", "l2_step", "linf_step", "random_init"]
