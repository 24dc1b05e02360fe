"""One process per device under ``torchrun`` (NCCL on GPUs, gloo on CPUs), or a single
process: the same few calls either way, so the training loop has no branches for it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device
from .config import TrainConfigError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # the group was started here (a caller's is left to the caller)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None) -> Context:
    """The process's rank and device. Under torchrun (WORLD_SIZE set) it joins the process
    group; a CUDA device becomes the local rank's GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise TrainConfigError(str(exc)) from None
    if world_size == 1:
        return Context(0, 1, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), dev, owns_group)


def teardown(ctx: Context, *, clean: bool) -> None:
    if ctx.distributed and dist.is_initialized():
        if clean:  # no rank may close its connections while another still talks over them
            dist.barrier()
        if ctx.owns_group:  # fastadv.fit under a caller's own group: theirs to close
            dist.destroy_process_group()


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64 for exact counts)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(ctx: Context, obj) -> list:
    """Every rank's ``obj`` as a list, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(ctx: Context, module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them at the
    start of each forward, so after the last step of an epoch each rank still holds its own;
    evaluation and the checkpoint must see rank 0's, the ones saved."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def gather_to_main(ctx: Context, obj):
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); CPU tensors inside."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(ctx: Context, obj):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
