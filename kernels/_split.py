"""The aligned split of an elementwise walk: head | body | tail.

Triton emits 128-bit loads and stores (ld.global.v4) only where it can prove them aligned:
every pointer argument a multiple of 16 bytes and the masked length a multiple of 16
elements. It specialises each launch on exactly that. So the launchers walk
``[0, numel)`` as

- a head of ``head < 16`` elements, up to the first element at which every tensor is
  16-byte aligned (0 for fresh allocations; more for views such as ``x[1:]`` whose tensors
  are offset alike),
- a body of ``body`` elements, a multiple of 16, passed as pointers shifted to that
  aligned element, so that the kernel is specialised as aligned and vectorises,
- a tail of ``tail < 16`` elements after it,

with the head and tail done by one extra program of the same launch (the CUDA C++ kernels
peel their unaligned head the same way, csrc/cuda/elementwise.cuh). Tensors that no common
head aligns (offset differently) get ``head = 0`` and run correctly with 32-bit accesses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._traceable import tracing

VECTOR_BYTES = 16
EDGE = 16  # lanes of the head and tail blocks: each has fewer than 16 elements


class Split(NamedTuple):
    head: int
    body: int
    tail: int


def aligned_split(numel: int, tensors) -> Split:
    """head, body, tail of ``numel`` elements walked flat in memory order in ``tensors``.
    A tracer's tensors have no addresses: head 0 then (correct for any alignment; the
    compiler that launches the traced kernel specialises on the addresses it sees)."""
    if tracing(tensors[0]):
        body = numel // EDGE * EDGE
        return Split(0, body, numel - body)
    ptrs = [t.data_ptr() for t in tensors]
    head = 0
    if any(p % VECTOR_BYTES for p in ptrs):  # fresh allocations are aligned: skip the search
        sizes = [t.element_size() for t in tensors]
        # head < numel: a head of every element would leave `shifted` tensors empty, whose
        # data_ptr() is null, and the head block then reads and writes just below address 0.
        for h in range(1, min(EDGE, numel)):
            if all((p + h * s) % VECTOR_BYTES == 0 for p, s in zip(ptrs, sizes)):
                head = h
                break
    body = (numel - head) // EDGE * EDGE
    return Split(head, body, numel - head - body)


def shifted(t: torch.Tensor, head: int) -> torch.Tensor:
    """t's memory from its element ``head`` on (t is dense, walked flat in memory order)."""
    if head == 0:
        return t
    return torch.as_strided(t, (t.numel() - head,), (1,), t.storage_offset() + head)


def programs(split: Split, block: int) -> int:
    """Programs of a launch: one per block of the body, one more for head and tail."""
    return -(-split.body // block) + (1 if split.head or split.tail else 0)
