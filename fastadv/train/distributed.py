"""One process per device under ``torchrun`` (NCCL on GPUs, gloo on CPUs), or a single
process: the same few calls either way, so the training loop has no branches for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

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
    peers: list = field(default_factory=list)  # each rank's (host, pid), for a lost-peer line
    launch: str = ""  # one id per group, for the roll call's keys
    agent_store: object = None  # torchrun's key-value store: it outlives every worker

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None, timeout: float = 600) -> Context:
    """The process's rank and device. Under torchrun (WORLD_SIZE set) it joins the process
    group, whose collectives give up after ``timeout`` seconds (a lost node sends nothing: the
    survivors would otherwise wait gloo's 30 minutes); a CUDA device becomes the local rank's
    GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise TrainConfigError(str(exc)) from None
    wait = timedelta(seconds=timeout)
    if world_size == 1:
        return Context(0, 1, dev, agent_store=agent_store(wait))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    shared = agent_store(wait)
    if owns_group:
        store = _attempt_store(shared, wait)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=wait,
                                **({} if store is None else dict(
                                    store=dist.PrefixStore("fastadv", store),
                                    rank=int(os.environ["RANK"]), world_size=world_size)))
    peers = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid(), uuid.uuid4().hex))
    return Context(dist.get_rank(), dist.get_world_size(), dev, owns_group,
                   [p[:2] for p in peers], peers[0][2], shared)


def agent_store(wait: timedelta):
    """A client of the key-value store torchrun's agent keeps for the whole job (it outlives
    every worker), or None outside torchrun or when the agent keeps none for its workers."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                         int(os.environ["WORLD_SIZE"]), is_master=False, timeout=wait)


def _attempt_store(shared, wait: timedelta):
    """A key-value store of this attempt's own under torchrun's shared store ``shared``, else
    None: env:// as usual. The agent keeps one store for every attempt of a job, and gloo and
    NCCL find their peers' addresses in it, so after a restart a rank may read a dead
    attempt's address and fail to connect (pytorch/pytorch#135712). Rank 0 hosts a fresh
    store and posts its port with a nonce; the others retry until the port they read answers
    with that nonce (a stale one refuses, or names another)."""
    if shared is None:
        return None
    host = os.environ["MASTER_ADDR"]
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    key = "fastadv/attempt-store"
    if rank == 0:
        own = dist.TCPStore(host, 0, world_size, is_master=True, timeout=wait,
                            wait_for_workers=False)
        nonce = uuid.uuid4().hex
        own.set("nonce", nonce)
        shared.set(key, f"{own.port} {nonce}")
        return own
    deadline = time.monotonic() + wait.total_seconds()
    while True:
        own_port, nonce = shared.get(key).decode().split()
        try:
            socket.create_connection((host, int(own_port)), timeout=2).close()  # quietly first
            own = dist.TCPStore(host, int(own_port), world_size, is_master=False,
                                timeout=timedelta(seconds=2))
            if own.get("nonce").decode() == nonce:
                own.set_timeout(wait)
                return own
        except (OSError, RuntimeError, ValueError):  # a dead attempt's port, or not there yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0's store for this attempt never answered "
                               f"at {host}:{own_port} (timed out)")
        time.sleep(0.1)


def teardown(ctx: Context, *, clean: bool) -> None:
    if ctx.distributed and dist.is_initialized():
        if clean:  # no rank may close its connections while another still talks over them
            dist.barrier()
        if ctx.owns_group:  # fastadv.fit under a caller's own group: theirs to close
            dist.destroy_process_group()


# What gloo and NCCL say when the other end of a collective is gone (a timeout only from gloo
# itself: a DataLoader or a CUDA launch times out too).
_TRANSPORT_FAILURES = ("connection closed by peer", "connection reset by peer", "broken pipe",
                       "connection refused", "socket closed", "caused pair closure",
                       "nccl communicator was aborted")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` may be a collective failing because another rank is gone (the roll
    call then tells: a rank that answers was not lost)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        any(failure in text for failure in _TRANSPORT_FAILURES)
        or (("timed out" in text or "timeout" in text) and "gloo" in text))


def transport_reason(exc: BaseException) -> str:
    """The transport's own words for a peer failure, without gloo's file and line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "] " in text and text.startswith("["):
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].strip()


ROLL_CALL_SECONDS = 10  # well inside torchrun's 30 s between its SIGTERM and SIGKILL


def roll_call(ctx: Context, wait: float = ROLL_CALL_SECONDS) -> list[int] | None:
    """The ranks that did not answer within ``wait`` seconds, each survivor leaving its mark
    in torchrun's key-value store (which outlives the workers); None when the store itself is
    gone (the rendezvous host was lost)."""
    try:
        store = ctx.agent_store or dist.distributed_c10d._get_default_store()
        store.set(f"fastadv/alive/{ctx.launch}/{ctx.rank}", "1")
        others = [r for r in range(ctx.world_size) if r != ctx.rank]
        deadline = time.monotonic() + wait
        while True:
            missing = [r for r in others if not store.check([f"fastadv/alive/{ctx.launch}/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - any failure of the store means it is unreachable
        return None


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64 for exact counts)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def average_gradients(ctx: Context, params: list) -> None:
    """Each parameter's ``.grad`` replaced by its mean over ranks (one all-reduce), as DDP
    does for the model's, for a module DDP does not wrap."""
    grads = [p.grad for p in params if p.grad is not None]
    if not ctx.distributed or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


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
