"""Checkpoints that survive a kill: written atomically (temp file, fsync, rename), holding
everything a run needs to continue bit for bit (model, optimizer, scheduler, counters, every
RNG state), and ``load_model`` to get a trained model back for evaluation."""

from __future__ import annotations

import hashlib
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


DIGEST = "sha256"  # the key a checked file keeps its contents' digest under


def content_digest(obj) -> str:
    """sha256 over a saved object's contents (tensor bytes, dtypes, shapes and every other
    value's repr): torch.load checks no checksum, so a flipped byte in a tensor would load."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__[0]}{len(o)}".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"V{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def save_checked(obj: dict, path: str) -> None:
    """:func:`save_atomic` of ``obj`` with its :func:`content_digest`, which
    :func:`check_digest` verifies on load (a damaged file is refused, never used)."""
    save_atomic({**obj, DIGEST: content_digest(obj)}, path)


def check_digest(obj, path: str) -> None:
    """A ValueError when ``obj`` (loaded from ``path``) carries a digest its contents do not
    match; files written before digests existed pass."""
    if isinstance(obj, dict) and DIGEST in obj:
        body = {k: v for k, v in obj.items() if k != DIGEST}
        if content_digest(body) != obj[DIGEST]:
            raise ValueError(f"{path!r} is damaged: its contents do not match the checksum "
                             "written with it")


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
        raise ValueError(f"checkpoint {path!r} is damaged or not a fastadv checkpoint "
                         f"(torch.load failed: {exc.__class__.__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a fastadv checkpoint (no format tag "
                         f"{FORMAT!r}); fastadv.load_model reads files written by "
                         "python -m fastadv.train")
    try:
        check_digest(ckpt, path)
    except ValueError as exc:
        raise ValueError(f"checkpoint {exc}") from None
    ckpt.pop(DIGEST, None)
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device | None = None) -> nn.Module:
    """The model of a loaded checkpoint, rebuilt from its recorded architecture, in eval
    mode, on ``device`` (default: CPU)."""
    if ckpt.get("model_args") is None:
        raise ValueError("this checkpoint holds the weights of a model of the caller's own "
                         f"({ckpt['config'].get('model', '?')}, trained by fastadv.fit): build "
                         "the model and fill it with fastadv.load_weights(model, path)")
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval()


def load_model(path: str, device: str | torch.device | None = None) -> nn.Module:
    """The model a ``python -m fastadv.train`` checkpoint holds (``last.pt`` or ``best.pt``),
    in eval mode, on ``device`` (default: CPU), taking inputs ``[B, C, H, W]`` in [0, 1]
    (it normalises inside)."""
    return model_from_checkpoint(load_checkpoint(path), device)


def checkpoint_state(path: str) -> str:
    """Where the checkpoint at ``path`` stands, checked by loading it: 'intact (epoch 2 done,
    batch 14 of epoch 3)', or why it is not usable."""
    if not os.path.exists(path):
        return "not written yet"
    try:
        progress = load_checkpoint(path)["progress"]
    except (OSError, ValueError, KeyError) as exc:
        return f"not usable ({exc})"
    done, batch = progress["epoch"], progress["step_in_epoch"]
    where = f"{done} epoch{'s' if done != 1 else ''} done"
    if batch:
        where += f", batch {batch} of epoch {done + 1}"
    return f"intact ({where})"
