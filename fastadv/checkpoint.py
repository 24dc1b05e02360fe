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
from .model_specs import ModelSpecError, check_trusted, is_model_spec
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


# What a checkpoint holds (the trainer writes every key): anything else, or a key of the
# wrong type, means the file was not written by fastadv, or was edited.
CHECKPOINT_KEYS = {"format": str, "config": dict, "model_args": (dict, type(None)),
                   "model": dict, "optimizer": dict, "scheduler": dict,
                   "scaler": (dict, type(None)), "progress": dict, "ranks": list,
                   "world_size": int, "torch": str, "data_fingerprint": (str, type(None)),
                   # --ema: "model" holds the averaged weights, these the trained ones and
                   # the average's own state
                   "raw_model": (dict, type(None)), "ema": (dict, type(None))}
PROGRESS_KEYS = {"epoch": int, "step_in_epoch": int, "global_step": int,
                 "best_score": (float, int), "best_epoch": (int, type(None)), "history": list}
# Keys older releases did not write yet: absent, they read as None.
OPTIONAL_KEYS = ("torch", "data_fingerprint", "raw_model", "ema")
MODEL_ARGS_KEYS = ("name", "num_classes", "in_channels", "image_size", "mean", "std", "width")
# The recorded settings evaluation and the experiments read back, with their types (a
# crafted file must give a clear error, not a TypeError deep in a data loader).
CONFIG_TYPES = {"dataset": str, "method": str, "model": str, "eps": (int, float),
                "seed": int, "epochs": int, "steps": int, "image_size": int,
                "synthetic_train": int, "synthetic_test": int, "val_size": (int, type(None)),
                "eval_examples": int, "batch_size": int, "workers": int,
                "augment": (str, type(None)), "data_dir": (str, type(None)),
                "verify": bool}


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A fastadv checkpoint as a dict; a clear ValueError (FileNotFoundError) for a missing
    file, a foreign or damaged one, and one whose fields are missing, unknown or of the wrong
    type."""
    if os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is a directory; a run's checkpoints are "
                                f"{os.path.join(path, 'best.pt')} and "
                                f"{os.path.join(path, 'last.pt')}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    kind = _foreign_kind(path)
    if kind:
        raise ValueError(f"checkpoint {path!r} is {kind}, not a checkpoint; a run's "
                         "checkpoints are its best.pt and last.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(f"checkpoint {path!r} is damaged or not a fastadv checkpoint "
                         f"(torch.load failed: {_load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a fastadv checkpoint (no format tag "
                         f"{FORMAT!r}); fastadv.load_model reads files written by "
                         "python -m fastadv.train")
    try:
        check_digest(ckpt, path)
    except ValueError as exc:
        raise ValueError(f"checkpoint {exc}") from None
    ckpt.pop(DIGEST, None)
    for key in OPTIONAL_KEYS:
        ckpt.setdefault(key, None)
    _check_fields(ckpt, {**CHECKPOINT_KEYS, **{k: (CHECKPOINT_KEYS[k], type(None))
                                                 for k in OPTIONAL_KEYS}},
                  f"checkpoint {path!r}")
    _check_fields(ckpt["progress"], PROGRESS_KEYS, f"checkpoint {path!r}: progress")
    _check_types(ckpt["config"], CONFIG_TYPES, f"checkpoint {path!r}: config")
    if not all(isinstance(r, dict) for r in ckpt["progress"]["history"]):
        raise ValueError(f"checkpoint {path!r}: its history holds something other than "
                         "per-epoch records: the file was edited or is damaged")
    if len(ckpt["ranks"]) != ckpt["world_size"] or not all(isinstance(r, dict)
                                                         for r in ckpt["ranks"]):
        raise ValueError(f"checkpoint {path!r}: its per-rank states do not match its "
                         f"world_size {ckpt['world_size']}: the file was edited or is damaged")
    return ckpt


def _load_failure(exc: Exception) -> str:
    """torch.load's error in one line: the unpickler's own reason (an object fastadv never
    saves), not its advice on loading untrusted files unsafely."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line.partition("WeightsUnpickler error: ")[2] for line in lines
                   if "WeightsUnpickler error: " in line), None)
    if reason:
        return f"it holds an object fastadv never saves ({reason.split('. ')[0]})"
    return f"{type(exc).__name__}: {(lines or [''])[0][:200]}"


def _foreign_kind(path: str) -> str | None:
    """'a JSON file', 'a text file', 'empty' for files that cannot be a checkpoint (a zip
    archive or a legacy pickle), told from their first bytes, so torch.load's long unpickler
    message never reaches the user."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return None


def _check_fields(obj: dict, fields: dict, where: str) -> None:
    missing = [k for k in fields if k not in obj]
    unknown = sorted(map(repr, set(obj) - set(fields)))
    if missing or unknown:
        raise ValueError(f"{where} " + "; ".join(filter(None, (
            f"lacks {', '.join(map(repr, missing))}" if missing else "",
            f"has unknown fields {', '.join(unknown)}" if unknown else "")))
            + ": it was not written by fastadv, or was edited")
    for key, types in fields.items():
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types in (int, float)):
            raise ValueError(f"{where}: {key!r} is a {type(value).__name__}, which fastadv "
                             "never writes there: the file was edited or is damaged")


def _check_types(obj: dict, types: dict, where: str) -> None:
    """The keys of ``types`` that ``obj`` has are of their types (bool is no int here)."""
    for key, kinds in types.items():
        if key not in obj:
            continue
        value = obj[key]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{where}: {key!r} is {value!r}, of a type fastadv never writes "
                             "there: the file was edited or is damaged")


def model_from_record(model_args: object, origin: str, *, trust_code: bool = False,
                      asked_for: str | None = None) -> nn.Module:
    """The model ``build_model(**model_args)`` makes, for arguments read from ``origin`` (a
    file): the keys must be exactly ``MODEL_ARGS_KEYS``, every value is checked before
    anything is allocated, and a spec that would run code is built only with ``trust_code``
    or when it is ``asked_for`` (see :func:`fastadv.model_specs.check_trusted`). Every
    problem is a ValueError naming ``origin`` (an UntrustedModelCode for the trust rule)."""
    if not isinstance(model_args, dict):
        raise ValueError(f"{origin}: its model arguments are a {type(model_args).__name__}, "
                         "not a mapping: the file was edited or is damaged")
    _check_fields(model_args, dict.fromkeys(MODEL_ARGS_KEYS, object), f"{origin}: model_args")
    name = model_args["name"]
    if isinstance(name, str) and is_model_spec(name):
        try:
            check_trusted(name, origin, trust_code=trust_code, asked_for=asked_for)
        except ModelSpecError:
            raise
        except ValueError as exc:  # a malformed spec
            raise ValueError(f"{origin}: {exc}") from None
    try:
        return build_model(**model_args)
    except ModelSpecError:
        raise
    except ValueError as exc:
        raise ValueError(f"{origin}: its model cannot be built ({exc})") from None


def model_from_checkpoint(ckpt: dict, device: str | torch.device | None = None, *,
                          trust_code: bool = False, asked_for: str | None = None,
                          origin: str = "the checkpoint") -> nn.Module:
    """The model of a loaded checkpoint, rebuilt from its recorded architecture
    (:func:`model_from_record`), with its weights, in eval mode, on ``device`` (default:
    CPU)."""
    if ckpt.get("model_args") is None:
        raise ValueError("this checkpoint holds the weights of a model of the caller's own "
                         f"({ckpt['config'].get('model', '?')}, trained by fastadv.fit): build "
                         "the model and fill it with fastadv.load_weights(model, path)")
    model = model_from_record(ckpt["model_args"], origin, trust_code=trust_code,
                              asked_for=asked_for)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{origin}: its weights do not fit its recorded model "
                         f"({first})") from None
    bad = [k for k, t in ckpt["model"].items()
           if isinstance(t, torch.Tensor) and t.is_floating_point()
           and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{origin}: its weights hold NaN or infinite values ({', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}): a diverged model, which fastadv "
                         "never evaluates")
    return model.to(device or "cpu").eval()


def load_model(path: str, device: str | torch.device | None = None, *,
               trust_code: bool = False) -> nn.Module:
    """The model a ``python -m fastadv.train`` checkpoint holds (``last.pt`` or ``best.pt``),
    in eval mode, on ``device`` (default: CPU), taking inputs ``[B, C, H, W]`` in [0, 1]
    (it normalises inside).

    A checkpoint of a ``package.module:factory`` model names code: it is imported and run
    only with ``trust_code=True`` (pass it only for files whose author you trust, as with
    Hugging Face's ``trust_remote_code``); built-in, ``torchvision:`` and ``timm:`` models
    need no trust."""
    return model_from_checkpoint(load_checkpoint(path), device, trust_code=trust_code,
                                 origin=f"checkpoint {path!r}")


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
