"""Checkpoints that survive a kill: written atomically (temp file, fsync, rename), holding
everything a run needs to continue bit for bit (model, optimizer, scheduler, counters, every
RNG state), and ``load_model`` to get a trained model back for evaluation."""

from __future__ import annotations

import os
import random

import torch
from torch import nn

from .models import build_model

FORMAT = "fastadv-checkpoint/1"


def save_atomic(obj, path: str) -> None:
    """torch.save to a temp file beside ``path``, fsync, then rename over it: a reader (or a
    run resumed after a kill) sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # permissions from the umask, like any other output
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def rng_state() -> dict:
    """Every generator a training step draws from: Python's, torch's CPU and each CUDA
    device's (only if CUDA was initialised, to keep CPU runs from touching it)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A fastadv checkpoint as a dict; a clear error for a missing file or a foreign one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(f"checkpoint {path!r} is not a fastadv checkpoint "
                         f"(torch.load failed: {exc.__class__.__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a fastadv checkpoint (no format tag "
                         f"{FORMAT!r}); fastadv.load_model reads files written by "
                         "python -m fastadv.train")
    return ckpt


def load_model(path: str, device: str | torch.device | None = None) -> nn.Module:
    """The model a ``python -m fastadv.train`` checkpoint holds (``last.pt`` or ``best.pt``),
    rebuilt from its recorded architecture, in eval mode, on ``device`` (default: CPU),
    taking inputs ``[B, C, H, W]`` in [0, 1] (it normalises inside)."""
    ckpt = load_checkpoint(path)
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval()
