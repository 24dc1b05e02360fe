"""Resumable evaluation state: the results of completed units of work (an attack pass over
one batch, a sanity run, a point of the curve), saved atomically after each unit to a
partial file, so a run killed at any point continues where it stopped and ends with the same
per-example results as one never interrupted.

The file also records the torchrun job that wrote it (``TORCHELASTIC_RUN_ID``, beside the
settings, not among them: a resume compares the settings exactly, and a later job may well
continue an earlier one's work), so that a restarted worker of ``--overwrite`` can tell the
partial its own job wrote, to continue, from an older one, to discard."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn

from ..checkpoint import check_digest, save_checked
from .._outdir import run_id

FORMAT = "fastadv-eval-partial/2"  # /2: a unit per attack per batch
RUN_ID = "torchelastic_run_id"  # optional: files written before it was recorded still load


def fingerprint(*items) -> str:
    """sha256 over tensors (values, dtypes and shapes) and a model's state dict: so a resume
    can tell that the model and the data are the ones the partial results belong to."""
    h = hashlib.sha256()

    def add(t: torch.Tensor):
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())

    for item in items:
        if isinstance(item, nn.Module):
            for name, t in sorted(item.state_dict().items()):
                h.update(name.encode())
                add(t)
        else:
            add(item)
    return h.hexdigest()[:16]


class Store:
    """Completed units by key, mirrored to ``path`` (when given) after every ``put``.

    ``resume=False`` refuses to overwrite an existing partial file (it holds an interrupted
    run); ``resume=True`` loads it (refusing one written with other ``settings``), or starts
    fresh when there is none. Every write records the torchrun job of this process
    (:func:`recorded_run_id` reads it back)."""

    def __init__(self, path: str | None, settings: dict, resume: bool):
        self.path, self.settings, self.units = path, settings, {}
        self.run_id = run_id()
        if path is None:
            if resume:
                raise ValueError("resume needs a state file (the CLI's --json OUT.json keeps "
                                 "it in OUT.json.partial)")
            return
        if not os.path.exists(path):
            return
        if not resume:
            raise ValueError(f"{path} holds an interrupted evaluation: continue it with "
                             "--resume (resume=True), or delete it to start over")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not usable
            raise ValueError(f"--resume: {path} is not a readable partial evaluation "
                             f"({exc.__class__.__name__}: {exc}); delete it to start over"
                             ) from None
        try:
            check_digest(state, path)
        except ValueError as exc:
            raise ValueError(f"--resume: {exc}; delete it to start over") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"--resume: {path} is not a fastadv partial evaluation; delete it "
                             "to start over")
        saved = state["settings"]
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            diffs = ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"--resume: {path} was written with other settings ({diffs}); "
                             "resume with the same flags, or delete it to start over")
        self.units = state["units"]

    def __contains__(self, key: str) -> bool:
        return key in self.units

    def __getitem__(self, key: str):
        return self.units[key]

    def put(self, key: str, value) -> None:
        self.units[key] = value
        if self.path is not None:
            save_checked({"format": FORMAT, "settings": self.settings, RUN_ID: self.run_id,
                          "units": self.units}, self.path)

    def finish(self) -> None:
        """The run is complete (its report written): the partial file goes."""
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def recorded_run_id(path: str) -> str | None:
    """The torchrun job id recorded in the partial file ``path``: None when it records none
    (written outside torchrun, or before ids were recorded), or when the file is missing,
    unreadable or damaged (nothing there is worth continuing)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_digest(state, path)
    except Exception:  # noqa: BLE001 - any failure means the file is not usable
        return None
    value = state.get(RUN_ID) if isinstance(state, dict) else None
    return value if isinstance(value, str) else None
