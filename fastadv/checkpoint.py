"""Checkpoints that survive a kill: written atomically (temp file, fsync, rename), holding
everything a run needs to continue bit for bit (model, optimizer, scheduler, counters, every
RNG state), and ``load_model`` to get a trained model back for evaluation."""

from __future__ import annotations

import os
import random

import torch
from torch import nn

from ._io import atomic_open
from .models import build_model

FORMAT = "fastadv-checkpoint/1"


def save_atomic(obj, path: str) -> None:
    """torch.save through a temp file, fsync and rename (:func:`fastadv._io.atomic_open`)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def rng_state() -> dict:
    """Every generator a training step draws from: Python's, torch's CPU and each CUDA
    device's (only if CUDA was initialised, to keep CPU runs from touching it)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        # A machine with fewer GPUs than the one that saved: restore the ones it has.
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A fastadv checkpoint as a dict; a clear error for a missing file or a foreign one."""
    if os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is a directory; a run's checkpoints are "
                                f"{os.path.join(path, 'best.pt')} and "
                                f"{os.path.join(path, 'last.pt')}")
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


def model_from_checkpoint(ckpt: dict, device: str | torch.device | None = None) -> nn.Module:
    """The model of a loaded checkpoint, rebuilt from its recorded architecture, in eval
    mode, on ``device`` (default: CPU)."""
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval()


def load_model(path: str, device: str | torch.device | None = None) -> nn.Module:
    """The model a ``python -m fastadv.train`` checkpoint holds (``last.pt`` or ``best.pt``),
    in eval mode, on ``device`` (default: CPU), taking inputs ``[B, C, H, W]`` in [0, 1]
    (it normalises inside)."""
    return model_from_checkpoint(load_checkpoint(path), device)
