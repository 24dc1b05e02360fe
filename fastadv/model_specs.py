"""Models named by a spec string rather than a built-in name (``fastadv.models.MODELS``).

``--model`` accepts, besides the built-in names:

* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, num_classes=...)``;
* ``timm:NAME`` -- ``timm.create_model(NAME, num_classes=..., in_chans=...)`` (timm optional);
* ``package.module:factory`` -- your own ``factory(num_classes=...)`` returning an ``nn.Module``.
  The current working directory is importable (as with ``python -m``), so a ``mymodels.py``
  beside you works as ``--model mymodels:make``.

fastadv models take inputs in [0, 1] and normalise inside (the RobustBench convention), so a
spec model built with the data's ``mean``/``std`` comes wrapped in ``Normalized``.
``check_model_output`` runs a model once on a zeros batch so a wrong class count or a model
that returns a tuple is reported before training starts, not after an hour of it.

No network is assumed (nor on users' clusters): pretrained weights must already be on disk.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence

import torch
from torch import nn

from .nn import Normalized, per_channel

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
# timm names: "arch" or "arch.pretrained_tag" (e.g. resnet18.a1_in1k), or a Hugging Face repo
# "hf-hub:org/name" (only usable offline when it is already in the Hugging Face cache).
_TIMM = re.compile(r"(?:hf[-_]hub:[\w.\-]+/[\w.\-]+|[A-Za-z0-9_][\w.\-]*)")
_FORMS = "torchvision:NAME, timm:NAME or package.module:factory"


class ModelSpecError(ValueError):
    """A ``--model`` spec that cannot be built or whose model does not fit the data."""


class UntrustedModelCode(ModelSpecError):
    """A spec read from a file (a checkpoint, a run's config.json) that would import and run
    code the file chose, without the user having asked for that code."""


def runs_code(spec: str) -> bool:
    """Whether building ``spec`` imports a module it names (``package.module:factory``) or
    reads a model definition from outside the library's registry (``timm:hf-hub:...``), rather
    than picking a name out of torchvision's or timm's own registry."""
    kind, _, name = _parse(spec)
    return kind == "factory" or (kind == "timm" and name.startswith(("hf-hub:", "hf_hub:")))


def check_trusted(spec: str, origin: str, *, trust_code: bool = False,
                  asked_for: str | None = None) -> None:
    """Raise UntrustedModelCode when ``spec``, read from ``origin`` (a file), would run code
    (:func:`runs_code`) and the user asked neither for that same spec (``asked_for``: the
    ``--model`` they typed) nor to trust the file's code (``trust_code``). Anyone can write a
    checkpoint or a config.json, and a recomputed checksum proves nothing about its author."""
    if trust_code or asked_for == spec or not runs_code(spec):
        return
    raise UntrustedModelCode(
        f"{origin} names the model {spec!r}, which would import and run code that the file "
        "chose; fastadv never runs code a file names unless asked: if you trust where the "
        f"file came from, pass --trust-model-code (in Python: trust_code=True), or pass "
        f"--model {spec} yourself")


def is_model_spec(text: str) -> bool:
    """True when ``text`` is meant as a spec rather than a built-in model name: it contains a
    colon (``torchvision:NAME``, ``timm:NAME``, ``package.module:factory``). Whether it is
    well formed is ``check_spec_syntax``'s job, so ``"torchvision:"`` is a spec (a bad one)."""
    return isinstance(text, str) and ":" in text


def check_spec_syntax(text: str) -> None:
    """Raise ``ModelSpecError`` when ``text`` is not a well-formed spec; imports nothing (the
    CLI checks its config with this before any model library loads)."""
    _parse(text)


def _parse(text: str) -> tuple[str, str, str]:
    """``text`` -> (kind, module, name): kind is "torchvision", "timm" or "factory"; module is
    the factory's module path ("" for the libraries)."""
    if not isinstance(text, str) or ":" not in text:
        raise ModelSpecError(f"--model {text!r} is not a model spec: write one of {_FORMS}, "
                             "or a built-in model name")
    prefix, _, name = text.partition(":")
    if prefix in ("torchvision", "timm"):
        example = "resnet18"
        if not name:
            raise ModelSpecError(f"--model {text!r} names no model: write {prefix}:NAME, "
                                 f"e.g. {prefix}:{example}")
        ok = name.isidentifier() if prefix == "torchvision" else _TIMM.fullmatch(name)
        if not ok:
            raise ModelSpecError(f"--model {text!r}: {name!r} is not a {prefix} model name "
                                 f"(e.g. {prefix}:{example})")
        return prefix, "", name
    if not _FACTORY.fullmatch(prefix):
        raise ModelSpecError(f"--model {text!r}: {prefix!r} is not a module path like "
                             f"package.module; write one of {_FORMS}{_library_typo(text)}")
    if not name.isidentifier():
        what = "names no factory" if not name else f"{name!r} is not a Python identifier"
        raise ModelSpecError(f"--model {text!r}: {what}; write {prefix}:factory, where "
                             f"factory(num_classes=...) returns an nn.Module")
    return "factory", prefix, name


def _library_typo(text: str) -> str:
    """" (did you mean torchvision:resnet18?)" when the prefix misspells a library."""
    prefix, _, name = text.partition(":")
    close = difflib.get_close_matches(prefix, ("torchvision", "timm"), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}:{name}?)" if close else ""


def build_from_spec(spec: str, *, num_classes: int, in_channels: int = 3,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    pretrained: bool = False) -> nn.Module:
    """The model ``spec`` names, with a ``num_classes``-way head, for ``in_channels`` inputs.

    With ``mean`` and ``std`` (the data's per-channel statistics, one value is repeated over
    the channels) the result is ``Normalized(net, mean, std)`` and takes inputs in [0, 1];
    without them it is the bare ``net``. ``pretrained`` loads the library's default weights
    from the local cache (torch hub for torchvision, the Hugging Face cache for timm) and, for
    torchvision, swaps the classification head when ``num_classes`` differs. A factory is
    imported with the current working directory on ``sys.path`` (as ``python -m`` has it) and
    called as ``factory(num_classes=num_classes)``; it loads its own weights, if any.
    Every problem is a ``ModelSpecError`` naming the spec and what to do.
    """
    kind, module, name = _parse(spec)
    if (mean is None) != (std is None):
        raise ValueError("build_from_spec: give both mean and std, or neither")
    if kind == "torchvision":
        net = _torchvision(spec, name, num_classes, in_channels, pretrained)
    elif kind == "timm":
        net = _timm(spec, name, num_classes, in_channels, pretrained)
    else:
        net = _factory(spec, module, name, num_classes, pretrained)
    if mean is None:
        return net
    return Normalized(net, per_channel(mean, in_channels), per_channel(std, in_channels))


# ---------------------------------------------------------------------------- torchvision

def _torchvision(spec, name, num_classes, in_channels, pretrained) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise ModelSpecError(f"--model {spec} needs torchvision, which is not installed: "
                             f"pip install torchvision") from exc
    if in_channels != 3:
        raise ModelSpecError(f"--model {spec}: torchvision models take 3-channel images but "
                             f"the data has {in_channels}; write a factory "
                             f"(package.module:factory) that adapts the first layer")
    known = torchvision.models.list_models()
    if name.lower() not in known:  # get_model ignores case
        close = difflib.get_close_matches(name.lower(), known, n=5)
        hint = f"close matches: {', '.join(close)}" if close else \
            "see torchvision.models.list_models()"
        raise ModelSpecError(f"--model {spec}: torchvision has no model {name!r} ({hint})")
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except Exception as exc:
        raise ModelSpecError(f"--model {spec}: torchvision has no pretrained weights for "
                             f"{name!r} ({exc})") from exc
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(directory, os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise ModelSpecError(
            f"--model {spec} with pretrained weights needs {path}, which is missing, and "
            f"fastadv never downloads: fetch {weights.url} on a machine with network and put "
            f"it in {directory}/ (set $TORCH_HOME to keep it elsewhere: the file is then "
            f"looked for in $TORCH_HOME/hub/checkpoints/)")
    try:
        # With the file in the hub cache get_model loads it without touching the network, and
        # applies the weights' own build arguments (their class count, inception's input
        # transform, a ViT's image size).
        net = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:
        raise ModelSpecError(f"--model {spec}: could not load pretrained weights from {path} "
                             f"({type(exc).__name__}: {exc}); delete the file and fetch "
                             f"{weights.url} again") from exc
    trained_classes = len(weights.meta.get("categories") or ()) or None
    if trained_classes is not None and trained_classes != num_classes:
        _replace_head(net, spec, trained_classes, num_classes)
    _check_rebuildable(net, torchvision.models.get_model(name, weights=None,
                                                         num_classes=num_classes), spec)
    return net


def _check_rebuildable(pretrained: nn.Module, plain: nn.Module, spec: str) -> None:
    """A checkpoint rebuilds the model without its weights' build arguments: some weights
    build another network (googlenet/inception: auxiliary heads, an input transform), which
    the rebuilt one would not be. Refused now rather than after the training."""
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    if (shapes(pretrained) != shapes(plain)
            or getattr(pretrained, "transform_input", None)
            != getattr(plain, "transform_input", None)):
        raise ModelSpecError(
            f"--model {spec} --pretrained: these weights build a different network from the "
            "plain architecture (auxiliary heads or an input transform), which checkpoints "
            "could not rebuild; write a factory (package.module:factory) that loads the "
            "weights and returns the network you want to train")


def _replace_head(net: nn.Module, spec: str, old: int, new: int) -> None:
    """Swap the last ``nn.Linear`` with ``old`` outputs (resnet ``fc``, vgg/efficientnet
    ``classifier[-1]``, vit ``heads.head``, ...) for a freshly initialised ``new``-way one."""
    heads = [(n, m) for n, m in net.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == old]
    if not heads:
        raise ModelSpecError(
            f"--model {spec}: the pretrained model has no Linear layer with {old} outputs to "
            f"replace by a {new}-class head (its classifier is some other layer); train with "
            f"its {old} classes, or write a factory (package.module:factory) that swaps the head")
    path, old_head = heads[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    # setattr also works on an nn.Sequential: its children are registered under "0", "1", ...
    setattr(parent, attr, nn.Linear(old_head.in_features, new, bias=old_head.bias is not None,
                                    device=old_head.weight.device, dtype=old_head.weight.dtype))


# ---------------------------------------------------------------------------------- timm

def _timm(spec, name, num_classes, in_channels, pretrained) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ModelSpecError(f"--model {spec} needs timm, which is not installed: "
                             f"pip install timm") from exc
    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise ModelSpecError(f"--model {spec}: timm has no model {name!r} ({hint})")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                 in_chans=in_channels)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        if pretrained:
            raise ModelSpecError(
                f"--model {spec}: could not load timm's pretrained weights for {name!r} "
                f"({cause}); without network they must already be in the Hugging Face cache "
                f"($HF_HOME/hub, default ~/.cache/huggingface/hub): create the model once with "
                f"pretrained=True on a machine with network and copy that cache (set "
                f"HF_HUB_OFFLINE=1 to fail fast instead of retrying)") from exc
        raise ModelSpecError(f"--model {spec}: timm.create_model failed ({cause})") from exc


# ------------------------------------------------------------------------------- factory

def _factory(spec, module_path, name, num_classes, pretrained) -> nn.Module:
    if pretrained:
        raise ModelSpecError(f"--model {spec}: pretrained applies to torchvision: and timm: "
                             f"models only; a factory loads its own weights")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # what `python -m` does, so ./mymodels.py is importable
    importlib.invalidate_caches()  # a module file written after start-up must be found
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_path == missing or module_path.startswith(missing + "."):
            raise ModelSpecError(
                f"--model {spec}: cannot import module {module_path!r} (no {missing!r} in the "
                f"current directory {cwd} or on PYTHONPATH): check the spelling, run from the "
                f"directory holding {module_path.replace('.', '/')}.py, or add that directory "
                f"to PYTHONPATH{_library_typo(spec)}") from exc
        raise ModelSpecError(f"--model {spec}: importing {module_path!r} failed: it imports "
                             f"{missing!r}, which is not installed") from exc
    except Exception as exc:
        raise ModelSpecError(f"--model {spec}: importing {module_path!r} raised "
                             f"{type(exc).__name__}: {exc}") from exc

    if not hasattr(module, name):
        public = _public_callables(module)
        close = difflib.get_close_matches(name, public, n=1)
        listing = f"its public callables are {', '.join(public)}" if public else \
            "it defines no public functions or classes"
        guess = f"; did you mean {module_path}:{close[0]}?" if close else ""
        raise ModelSpecError(f"--model {spec}: module {module_path!r} has no {name!r} "
                             f"({listing}){guess}")
    factory = getattr(module, name)
    if not callable(factory):
        raise ModelSpecError(f"--model {spec}: {module_path}.{name} is not callable (it is "
                             f"of type {type(factory).__name__}); name a function or class "
                             f"called as factory(num_classes=...)")
    needs = (f"the factory must accept num_classes= (it is called as "
             f"{name}(num_classes={num_classes}))")
    try:
        inspect.signature(factory).bind(num_classes=num_classes)
    except TypeError as exc:
        raise ModelSpecError(f"--model {spec}: {needs}; its signature does not fit ({exc})") \
            from exc
    except ValueError:
        pass  # no signature to inspect (a builtin): calling it is the only check
    try:
        net = factory(num_classes=num_classes)
    except TypeError as exc:
        raise ModelSpecError(f"--model {spec}: calling it raised TypeError: {exc} ({needs})") \
            from exc
    except Exception as exc:
        raise ModelSpecError(f"--model {spec}: the factory raised "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ModelSpecError(f"--model {spec}: the factory returned a "
                             f"{type(net).__module__}.{type(net).__qualname__}, not an "
                             f"nn.Module")
    return net


def _public_callables(module) -> list[str]:
    """Public functions/classes ``module`` defines itself (not the ones it imports), sorted."""
    return sorted(n for n, v in vars(module).items()
                  if not n.startswith("_") and callable(v)
                  and getattr(v, "__module__", None) == module.__name__)


# -------------------------------------------------------------------------- output check

def check_model_output(model: nn.Module, *, in_channels: int, image_size: int, num_classes: int,
                       device="cpu", what: str) -> None:
    """Run ``model`` once, in eval mode and without gradients, on zeros
    ``[2, in_channels, image_size, image_size]`` and require logits ``[2, num_classes]``.

    ``what`` names the model's origin in the errors (``"--model torchvision:resnet18"``,
    ``"fit(model=...)"``). Parameters and BatchNorm running statistics are untouched (eval mode
    does not update them), and every submodule's train/eval flag is restored afterwards.
    """
    shape = [2, in_channels, image_size, image_size]
    expected = f"[2, {num_classes}]"
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(shape, device=device, dtype=dtype))
    except Exception as exc:
        raise ModelSpecError(f"{what}: the model fails on a {shape} input: "
                             f"{type(exc).__name__}: {exc}") from exc
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(out, torch.Tensor):
        raise ModelSpecError(f"{what}: the model returns a {type(out).__name__}, not a tensor "
                             f"of logits {expected}; wrap it so forward returns only the logits")
    got = list(out.shape)
    if len(got) == 2 and got[0] == 2:
        if got[1] != num_classes:
            raise ModelSpecError(f"{what}: the model returns {got} but the data has "
                                 f"{num_classes} classes: build it with num_classes="
                                 f"{num_classes}")
    else:
        raise ModelSpecError(f"{what}: the model returns a tensor of shape {got}; expected "
                             f"logits {expected} (one row per image, one column per class)")
