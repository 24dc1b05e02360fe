"""What every experiment shares: the error type the command line turns into one clear line,
output paths (``PREFIX.json`` next to ``PREFIX.png``), atomic writes, lazy matplotlib (Agg,
no pyplot state), the device, and a record of the machine the numbers came from."""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import sys

import torch

from .. import devices
from .._version import __version__
from .._io import write_atomic, write_json
from .._outdir import leftovers_line, remove_leftovers


class ExperimentError(ValueError):
    """Bad input to an experiment; the message names the argument (``--checkpoint`` ...)."""


# --------------------------------------------------------------------------- paths and files


def add_overwrite_flag(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing OUT.json/OUT.png (without it they are never "
                        "overwritten)")


def refuse_existing(prefix: str, flag: str = "--out",
                    overwrite: bool = False) -> tuple[str, str]:
    """(PREFIX.json, PREFIX.png), refused (an ExperimentError naming ``flag``) when either is
    a directory, or exists and ``overwrite`` is not given; creates nothing."""
    base, ext = os.path.splitext(prefix)
    if ext.lower() in (".json", ".png"):
        prefix = base
    json_path, png_path = prefix + ".json", prefix + ".png"
    for path in (json_path, png_path):
        if os.path.isdir(path):
            raise ExperimentError(f"{flag} {prefix!r}: {path} is a directory")
    existing = [p for p in (json_path, png_path) if os.path.lexists(p)]
    if existing and not overwrite:
        raise ExperimentError(f"{flag} {prefix!r}: {' and '.join(existing)} already "
                              f"exist{'s' if len(existing) == 1 else ''}; pass --overwrite to "
                              "replace them, or choose another " + flag)
    return json_path, png_path


def output_paths(prefix: str, flag: str = "--out",
                 overwrite: bool = False) -> tuple[str, str]:
    """(PREFIX.json, PREFIX.png); a trailing .json or .png on ``prefix`` is dropped. The
    folder is created; an unwritable one, a path that is a directory, or (without
    ``overwrite``) an existing output is an ExperimentError naming ``flag``: a user's files
    are never replaced unasked."""
    if not prefix:
        raise ExperimentError(f"{flag} must be a non-empty path prefix")
    json_path, png_path = refuse_existing(prefix, flag, overwrite)
    prefix = json_path[:-len(".json")]
    folder = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ExperimentError(f"{flag} {prefix!r}: cannot create {folder} ({exc.strerror})") \
            from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExperimentError(f"{flag} {prefix!r}: {folder} is not writable")
    # The temp files of writes of these outputs that a kill interrupted.
    count, size = remove_leftovers(folder, {os.path.basename(json_path),
                                            os.path.basename(png_path)})
    if count:
        print(leftovers_line(count, size, folder), file=sys.stderr)
    return json_path, png_path


def save_json(obj, path: str) -> None:
    write_json(path, obj)


def read_json(path: str, flag: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExperimentError(f"{flag}: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{flag}: {path} is not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- figures


def new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas: matplotlib is imported only here, and no
    pyplot (global state, GUI backends) is involved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str, dpi: int = 120) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- device, machine


def checked_device(name: str | None, flag: str = "--device") -> torch.device:
    """devices.resolve_device, its error as an ExperimentError."""
    try:
        return devices.resolve_device(name, flag)
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    """Where and with what the numbers were measured."""

    return {
        "device": devices.device_name(device), "device_type": device.type,
        "torch": torch.__version__, "fastadv": __version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "fastadv.experiments", *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith("__main__.py") else None,
    }


def parse_int_list(text: str, flag: str, low: int = 1) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: distinct ints >= low, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExperimentError(f"{flag} must be comma-separated integers such as 1,2,4, "
                              f"got {text!r}") from None
    if not values:
        raise ExperimentError(f"{flag} must list at least one integer, got {text!r}")
    bad = [v for v in values if v < low]
    if bad:
        raise ExperimentError(f"{flag} values must be >= {low}, got {bad[0]} in {text!r}")
    if len(set(values)) != len(values):
        raise ExperimentError(f"{flag} lists a value twice: {text!r}")
    return values
