"""Every training setting, written once: ``SETTINGS`` gives each its type, its default, its
help text and its rule, and drives the command line's parser, :class:`TrainConfig`, the
checks, and (through a test) the keywords of ``fastadv.fit``. ``DATASET_DEFAULTS`` holds the
defaults that depend on the dataset, and :func:`default_alpha` is the one rule for α.

Checks run in two places: :func:`check` before anything is written, and :func:`check_setup`
once the devices and the process group are known.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from ..attacks.core import PRECISIONS as ATTACK_PRECISIONS
from ..cli_common import MAX_COUNT, MAX_SEED, number, resume_arg
from ..data import DATASETS, MNIST_FORMAT, is_dataset, normalize_dataset
from ..data.folder import AUGMENTS, PREFIX as FOLDER_PREFIX, is_folder_name
from ..data.idx import PREFIX as IDX_PREFIX
from ..data.idx import is_idx_name
from ..data.splits import VAL_CAP, VAL_FRACTION
from ..errors import TrainConfigError
from ..model_specs import ModelSpecError, check_spec_syntax
from ..models import ARG_RANGES, MODELS
from .recipes import RECIPES
from .stall import STALL_EPOCHS

METHODS = ("pgd", "fgsm", "fgsm-rs", "n-fgsm", "free", "trades", "mart", "standard")
SCHEDULES = ("piecewise", "cyclic", "cosine", "constant")
PRECISIONS = tuple(ATTACK_PRECISIONS)
OPTIMIZERS = ("sgd", "adam")
ATTACK_BN = ("eval", "train")
SCALABLE = ("madry-cnn", "small-cnn")  # the models --width applies to
# fastadv.fit's runs: the data is the caller's ("fit:tensors", "fit:Dataset", ...), and so
# may be the model ("<ClassName>": rebuilt from weights only, by the caller).
FIT_PREFIX, USER_MODEL = "fit:", "<"
ONE_STEP = ("fgsm", "fgsm-rs", "n-fgsm")  # methods whose attack is a single step
AWP_METHODS = ("pgd", "trades", "mart")  # methods --awp perturbs the weights of

# The papers' settings per dataset (CIFAR-10: Madry et al./Rice et al.; MNIST: Madry et al.;
# Fashion-MNIST: MNIST's with eps 0.1, its usual radius, e.g. Wong & Kolter 2018); KMNIST and
# a user's own IDX set (idx:PATH) take MNIST's. digits is sized to train in a couple of
# minutes on a laptop CPU.
MNIST_SETTINGS = dict(model="madry-cnn", eps=0.3, alpha=0.01, steps=40, epochs=80, batch_size=50,
                      optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant",
                      eval_examples=1000)
DATASET_DEFAULTS = {
    "cifar10": dict(model="preact-resnet18", eps=8 / 255, alpha=2 / 255, steps=10, epochs=200,
                    batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    schedule="piecewise", eval_examples=1000),
    "mnist": MNIST_SETTINGS,
    "digits": dict(model="small-cnn", width=4, eps=0.2, alpha=0.05, steps=10, epochs=40,
                   batch_size=64,
                   optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="cosine",
                   eval_examples=360),
    "synthetic": dict(model="preact-resnet18", eps=8 / 255, alpha=2 / 255, steps=10, epochs=10,
                      batch_size=512, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                      schedule="cyclic", eval_examples=1000),
    "fashion-mnist": dict(MNIST_SETTINGS, eps=0.1),
    "kmnist": MNIST_SETTINGS,
    IDX_PREFIX + "PATH": MNIST_SETTINGS,
    # A folder of one's own images: ImageNet-style training of a torchvision ResNet-18 at
    # 224 px, with the l-inf radius usual at that scale (4/255, e.g. Salman et al. 2020).
    FOLDER_PREFIX + "PATH": dict(model="torchvision:resnet18", image_size=224, eps=4 / 255,
                                 alpha=1 / 255, steps=10, epochs=30, batch_size=128,
                                 optimizer="sgd", lr=0.1, weight_decay=5e-4,
                                 schedule="piecewise", eval_examples=1000),
}
DATASET_NAMES = "digits, mnist, fashion-mnist, kmnist, cifar10, synthetic, idx:PATH, folder:PATH"


def dataset_defaults(dataset: str) -> dict:
    """The DATASET_DEFAULTS entry of ``dataset`` (idx:PATH and folder:PATH sets share one
    each)."""
    if is_idx_name(dataset):
        return DATASET_DEFAULTS[IDX_PREFIX + "PATH"]
    if is_folder_name(dataset):
        return DATASET_DEFAULTS[FOLDER_PREFIX + "PATH"]
    return DATASET_DEFAULTS[dataset]


def dataset_arg(text: str) -> str:
    """--dataset: one of DATASETS, idx:PATH (a folder of MNIST-format files) or folder:PATH
    (a folder of images, one subfolder per class)."""
    if not is_dataset(text):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(DATASETS)}, idx:PATH for a "
            "folder of MNIST-format IDX files, or folder:PATH for a folder of images)")
    return normalize_dataset(text)


def model_arg(text: str) -> str:
    """--model: one of MODELS, torchvision:NAME, timm:NAME or package.module:factory."""
    if text in MODELS:
        return text
    try:
        check_spec_syntax(text)
    except ModelSpecError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (choose from {', '.join(MODELS)}, torchvision:NAME, timm:NAME or "
            "package.module:factory)") from None
    return text


def default_alpha(method: str, eps: float, steps: int, dataset: dict | None = None) -> float:
    """The step size when none is given: ε for fgsm (its one step), n-fgsm (de Jorge et al.)
    and free (Shafahi et al.), 1.25ε for fgsm-rs (Wong et al.); otherwise the dataset's α scaled with ε (its α/ε ratio),
    or, with no dataset defaults (``fastadv.fit``), Madry et al.'s 2.5ε/steps."""
    if method in ("fgsm", "n-fgsm", "free"):
        return eps
    if method == "fgsm-rs":
        return 1.25 * eps
    if dataset is None:
        return 2.5 * eps / steps
    if eps == dataset["eps"]:
        return dataset["alpha"]
    return dataset["alpha"] * eps / dataset["eps"]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    """One training setting. ``default`` is :class:`TrainConfig`'s (and what a run whose
    config predates the setting ran with); ``derived`` ones are filled by :func:`resolve`
    when unset (from the dataset or other settings); ``valid``/``must`` are the setting's
    own rule (``"--flag must <must>, got <value>"``); ``resumable`` ones may change between
    a run and its resume without changing what is computed."""

    name: str
    annotation: str
    default: object
    help: str
    type: Callable | None = None  # parses the flag's text
    choices: tuple | None = None
    valid: Callable | None = None
    must: str = ""
    action: str | None = None  # store_true/store_false for switches
    nargs: str | None = None  # "?": a flag with an optional value (its const when bare)
    const: object = None
    flag: str | None = None  # default --name-with-dashes
    metavar: str | None = None
    derived: bool = False
    resumable: bool = False
    in_fit: bool = True  # a keyword of fastadv.fit

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def at_least(low):
    return dict(valid=lambda v, low=low: v >= low, must=f"be >= {low}")


def between(low, high):
    return dict(valid=lambda v, low=low, high=high: low <= v <= high,
                must=f"lie in [{low}, {high}]")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def type_error(s: Setting, value) -> str | None:
    """Why ``value`` (from the command line, fit's keywords or a saved config.json) does not
    have ``s``'s type or exceeds MAX_COUNT, or None."""
    base, _, optional = s.annotation.partition(" | ")
    if value is None and optional == "None":
        return None
    if isinstance(value, bool) != (base == "bool") or not isinstance(value, _TYPES[base]):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string"}[base]
        return f"{s.cli_flag} must be {kind}, got {value!r} ({type(value).__name__})"
    if base == "int" and abs(value) > MAX_COUNT and s.name != "seed":
        return f"{s.cli_flag} must be at most {MAX_COUNT}, got {value}"
    if base == "float" and not math.isfinite(value):
        return f"{s.cli_flag} must be finite, got {value}"
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting("dataset", "str", "digits", type=dataset_arg, in_fit=False, help=(
        "digits (scikit-learn, offline), mnist, fashion-mnist, kmnist, cifar10, synthetic "
        "class-conditional images; idx:PATH: a folder of your own MNIST-format files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, each .gz or not; structural checks, no md5); or "
        "folder:PATH: your own images as PATH/train/<class>/*.png|jpg|..., with PATH/val "
        "and/or PATH/test alike if you have them (else held out of train/), decoded in "
        "--workers processes (needs torchvision)")),
    Setting("data_dir", "str | None", None, resumable=True, in_fit=False,
            help="where the dataset files are (default: $FASTADV_DATA or ~/.cache/fastadv/data)"),
    Setting("download", "bool", False, action="store_true", resumable=True, in_fit=False,
            help="fetch missing dataset files (needs a network)"),
    Setting("model", "str", "small-cnn", type=model_arg, derived=True, in_fit=False, help=(
        f"architecture, inputs in [0,1], normalised inside: {', '.join(MODELS)}; "
        "torchvision:NAME (e.g. torchvision:resnet18; num_classes from the data); "
        "timm:NAME (if timm is installed); or package.module:factory, your own function "
        "called as factory(num_classes=N) and returning an nn.Module (the current "
        "directory is importable)")),
    Setting("width", "int | None", None, type=int, derived=True, in_fit=False,
            valid=lambda v: v is None or 1 <= v <= ARG_RANGES["width"][1],
            must=f"lie in [1, {ARG_RANGES['width'][1]}]",
            help="width multiplier of madry-cnn/small-cnn (capacity)"),
    Setting("method", "str", "pgd", choices=METHODS, help=(
        "pgd: Madry PGD-AT; fgsm: one step of eps from x (Goodfellow et al.); fgsm-rs: "
        "Wong et al.'s FGSM with random start; n-fgsm: de Jorge et al.'s noisy FGSM "
        "(--nfgsm-noise, --nfgsm-clip; step --alpha, default eps); free: Shafahi et al.'s "
        "free AT (--free-replays); trades: Zhang et al. (--trades-beta); mart: Wang et al. "
        "(--mart-beta); standard: no attack")),
    Setting("recipe", "str | None", None, choices=tuple(RECIPES), in_fit=False, help=(
        "a paper's group of defaults (listed below with their sources and CIFAR-10 claims): "
        "it overrides the dataset's defaults, and every flag typed overrides it")),
    Setting("eps", "float", 0.2, type=number, derived=True, valid=lambda v: 0.0 <= v <= 1.0,
            must="lie in [0, 1] (inputs are in [0, 1])",
            help="l-inf radius in [0, 1] pixel units; fractions like 8/255 accepted"),
    Setting("alpha", "float", 0.05, type=number, derived=True,
            help="PGD step size (default: the dataset's, scaled with --eps; fgsm-rs: 1.25 "
                 "eps; n-fgsm and free: eps; fgsm: always eps)"),
    Setting("steps", "int", 10, type=int, derived=True, **at_least(1),
            help="PGD steps of the training attack (pgd, trades; fgsm and fgsm-rs take one "
                 "step)"),
    Setting("restarts", "int", 1, type=int, **at_least(1),
            help="PGD random restarts during training (worst kept)"),
    Setting("epochs", "int", 40, type=int, derived=True, **at_least(1),
            help="passes over the training set (free: each batch replayed --free-replays "
                 "times per pass)"),
    Setting("batch_size", "int", 64, type=int, derived=True, **at_least(1),
            help="global batch size (split across ranks under torchrun)"),
    Setting("optimizer", "str", "adam", choices=OPTIMIZERS, derived=True,
            help="sgd (with --momentum, Nesterov off) or adam"),
    Setting("lr", "float", 3e-3, type=number, derived=True, valid=lambda v: v > 0,
            must="be > 0", help="peak learning rate"),
    Setting("momentum", "float", 0.9, type=number, valid=lambda v: 0 <= v < 1,
            must="lie in [0, 1)", help="SGD momentum"),
    Setting("weight_decay", "float", 0.0, type=number, derived=True, valid=lambda v: v >= 0,
            must="be >= 0", help="L2 weight decay (coupled, as torch.optim applies it)"),
    Setting("schedule", "str", "cosine", choices=SCHEDULES, derived=True, help=(
        "piecewise: x0.1 at 50%% and 75%% of training; cyclic: linear up to the peak at 40%%, "
        "down to 0 (Wong et al.); cosine; constant")),
    Setting("precision", "str", "fp32", choices=PRECISIONS,
            help="bf16: the model under bf16 autocast (attack and training); inputs stay fp32"),
    Setting("channels_last", "bool", False, action="store_true",
            help="model and inputs in channels_last"),
    Setting("compile", "bool", False, action="store_true", resumable=True,
            help="torch.compile the model"),
    Setting("cuda_graph", "bool", False, action="store_true",
            help="pgd/fgsm/fgsm-rs on CUDA: replay the whole K-step training attack from a "
                 "CUDA graph (needs --attack-bn eval)"),
    Setting("device", "str | None", None, resumable=True,
            valid=lambda v: v is None or v.split(":")[0] in ("cpu", "cuda"),
            must="be cpu, cuda or cuda:N",
            help="cpu, cuda, cuda:1 (default: cuda when available; under torchrun the local "
                 "rank's GPU)"),
    Setting("seed", "int", 0, type=int, **between(0, MAX_SEED),
            help="seeds the weights, the batch order, attacks and augmentation (and the "
                 "digits split)"),
    Setting("out", "str", "runs/digits-pgd", derived=True, resumable=True,
            help="run directory (default: runs/<dataset>-<method>)"),
    Setting("resume", "bool", False, type=resume_arg, nargs="?", const=True,
            resumable=True, metavar="auto",
            help="continue the run in --out from its last.pt; --resume auto continues it when "
                 "there is one and starts it otherwise (for a scheduler that requeues the same "
                 "command: never another run's folder, nor files of yours). Under torchrun, "
                 "a restarted worker resumes by itself"),
    Setting("overwrite", "bool", False, action="store_true", resumable=True,
            help="replace the run (or the files of fastadv's names) in a non-empty --out; "
                 "without it, --out must be empty, new, or a run killed before its first "
                 "checkpoint, and --resume continues an unfinished run"),
    Setting("eval_every", "int", 1, type=int, **at_least(1),
            help="evaluate on the held-out split every N epochs"),
    Setting("eval_steps", "int", 10, type=int, derived=True, **at_least(1),
            help="PGD steps of that evaluation (default: --steps)"),
    Setting("eval_examples", "int", 1000, type=int, derived=True, **at_least(1),
            help="training examples evaluated each time (a fixed subset; the validation "
                 "split is evaluated whole)"),
    Setting("val_size", "int | None", None, type=int,
            valid=lambda v: v is None or v >= 1, must="be >= 1",
            help=f"training examples held out for validation (model selection); default "
                 f"{VAL_FRACTION * 100:.0f}%% of the training set, at most {VAL_CAP}"),
    Setting("eps_warmup", "int", 0, type=int, metavar="N", **at_least(0),
            help="ramp the training eps (and alpha) linearly from 0 to --eps over the first N "
                 "epochs, per step (helps large eps start learning); evaluation is always at "
                 "--eps"),
    Setting("strict", "bool", False, action="store_true", resumable=True,
            help="stop a run whose training stalls (loss at ln(classes) or clean accuracy at "
                 "chance for %d epochs), or that overfits catastrophically (a single-step "
                 "method: PGD accuracy collapsed under its own attack's), and exit with "
                 "status 3" % STALL_EPOCHS),
    Setting("verify", "bool", True, action="store_false", flag="--no-verify",
            resumable=True, in_fit=False,
            help="mnist, fashion-mnist, kmnist: skip the md5 check of the .gz files "
                 "(MNIST-format data that is not the official set); the structure is still "
                 "checked"),
    Setting("save_every", "int", 0, type=int, resumable=True, **at_least(0),
            help="also write last.pt every N optimizer steps, mid-epoch (0: at epoch ends "
                 "only)"),
    Setting("free_replays", "int", 4, type=int, **at_least(1),
            help="m of free AT: replays of each batch"),
    Setting("trades_beta", "float", 6.0, type=number, valid=lambda v: v >= 0, must="be >= 0",
            help="beta of TRADES: weight of the KL term"),
    Setting("mart_beta", "float", 6.0, type=number, valid=lambda v: v >= 0, must="be >= 0",
            help="beta of MART: weight of its misclassification-aware KL term (Wang et al.: 6)"),
    Setting("nfgsm_noise", "float", 2.0, type=number, valid=lambda v: v >= 0, must="be >= 0",
            metavar="K", help="n-fgsm: the uniform noise's radius, K times --eps (de Jorge et "
                              "al.: 2)"),
    Setting("nfgsm_clip", "float | None", None, type=number, metavar="K",
            valid=lambda v: v is None or v > 0, must="be > 0",
            help="n-fgsm: project the noisy step onto the ball of K times --eps (default: no "
                 "projection, as de Jorge et al.; only the clip to [0, 1])"),
    Setting("label_smoothing", "float", 0.0, type=number, valid=lambda v: 0 <= v < 1,
            must="lie in [0, 1)", help="label smoothing of the training cross-entropy (the "
                                       "attacks and the evaluation keep the plain one)"),
    Setting("ema", "float | None", None, type=number, metavar="DECAY",
            valid=lambda v: v is None or 0 < v < 1, must="lie in (0, 1)",
            help="keep an exponential moving average of the weights, per optimizer step with "
                 "the decay min(DECAY, (1+t)/(10+t)) (e.g. 0.995); BatchNorm statistics are "
                 "averaged the same way. Validation, best.pt, results.json and fastadv.eval "
                 "use the averaged weights; checkpoints keep the raw ones too"),
    Setting("awp", "float | None", None, type=number, metavar="GAMMA",
            valid=lambda v: v is None or v > 0, must="be > 0",
            help="adversarial weight perturbation (Wu et al.; pgd, trades, mart): each step's "
                 "loss is taken at weights moved by GAMMA (relative, per layer) up the "
                 "adversarial loss (Wu et al.: 5e-3), one extra forward and backward"),
    Setting("awp_warmup", "int", 10, type=int, metavar="EPOCHS", **at_least(0),
            help="--awp: epochs trained without the weight perturbation first (Wu et al.: "
                 "10)"),
    Setting("attack_bn", "str", "eval", choices=ATTACK_BN, help=(
        "mode of the model while the training attack runs. eval (default): running "
        "BatchNorm statistics, as at test time, and needed by --cuda-graph; train: batch "
        "statistics, as Madry et al.'s and Rice et al.'s code attack")),
    Setting("sync_bn", "bool", False, action="store_true",
            help="SyncBatchNorm across ranks under torchrun"),
    Setting("synthetic_train", "int", 50_000, type=int, in_fit=False, **at_least(2),
            help="synthetic: training images"),
    Setting("synthetic_test", "int", 10_000, type=int, in_fit=False, **at_least(1),
            help="synthetic: test images"),
    Setting("image_size", "int", 32, type=int, derived=True, in_fit=False,
            **between(4, ARG_RANGES["image_size"][1]),
            help="synthetic: image side (default 32); folder:PATH: images are resized and "
                 "cropped to this side (default 224)"),
    Setting("augment", "str | None", None, choices=AUGMENTS, in_fit=False, help=(  # fit: a bool
        "folder:PATH training augmentation: rrc (random-resized-crop and flip; default for "
        "images of 64 px and more), pad-crop (padded random crop and flip, CIFAR-style; "
        "default below 64 px) or none")),
    Setting("workers", "int", 0, type=int, derived=True, resumable=True, **at_least(0),
            help="folder:PATH: DataLoader processes decoding images (default: min(8, CPU "
                 "count)); results do not depend on it"),
    Setting("pretrained", "bool", False, action="store_true", in_fit=False, help=(
        "torchvision:/timm: models: start from their ImageNet weights, which must be on "
        "disk already (torch hub / Hugging Face cache); the classifier is replaced when the "
        "data has other classes")),
    Setting("progress", "bool", True, action="store_false", flag="--no-progress",
            resumable=True, help="no progress bars"),
    Setting("dist_timeout", "int", 600, type=int, resumable=True, **at_least(1),
            metavar="SECONDS",
            help="under torchrun: how long a rank waits for another in a collective before "
                 "reporting it lost (a lost machine sends nothing to say it is gone)"),
)
SETTING = {s.name: s for s in SETTINGS}
# Changing these between a run and its resume does not change what is computed (--strict
# only decides whether a stalled run stops, --no-verify whether the md5 is checked, --workers
# how many processes decode: every item is made under its own seed).
RESUMABLE = tuple(s.name for s in SETTINGS if s.resumable)


def _config_class():
    fields = [(s.name, s.annotation, dataclasses.field(default=s.default)) for s in SETTINGS]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_dataset(cls, dataset: str = "digits", **flags) -> "TrainConfig":
        """The config that ``python -m fastadv.train --dataset DATASET --flag value ...``
        runs: ``flags`` are the CLI's flags as keywords (``batch_size=256``, ``eps=8/255``);
        every unset one takes the dataset's default (DATASET_DEFAULTS), and every value is
        checked (ValueError naming the flag). The constructor, by contrast, takes every
        field as given."""
        if not is_dataset(dataset):
            raise TrainConfigError(f"--dataset must be one of {DATASET_NAMES}, got "
                                   f"{dataset!r}")
        args = parser().parse_args(["--dataset", dataset])
        unknown = sorted(set(flags) - set(vars(args)))
        if unknown:
            raise TypeError(f"unknown training flag(s): {', '.join(unknown)}")
        for key, value in flags.items():
            setattr(args, key, value)
        return resolve(args, {"dataset", *flags})

    cls = dataclasses.make_dataclass(
        "TrainConfig", fields, frozen=True,
        namespace={"to_dict": to_dict, "for_dataset": classmethod(for_dataset),
                   "__doc__": "A training run's settings, one field per entry of SETTINGS."})
    cls.__module__ = __name__
    return cls


TrainConfig = _config_class()


# --------------------------------------------------------------------------- the parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastadv.train",
        description="Adversarial training (Madry et al.): min over weights of the loss at the "
                    "worst point of the eps-ball found by PGD. Unset flags take the dataset's "
                    "defaults (shown per dataset at the end).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="per-dataset defaults:\n" + "\n".join(
            f"  {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in d.items())
            for name, d in DATASET_DEFAULTS.items())
        + f"\n  every dataset: val-size={VAL_FRACTION:.0%} of the training set, at most "
          f"{VAL_CAP}"
        + "\n\nrecipes (--recipe; CIFAR-10 results as claimed by their sources, not run by "
          "fastadv):\n" + "\n".join(
              textwrap.fill(r.describe(), width=96, initial_indent="  ",
                            subsequent_indent="    ") for r in RECIPES.values())
        + "\n\nexit status: 0 done, 1 a write failed, 2 bad input or a diverged training (NaN "
          "loss), 3 with --strict when the training stalled, diverged or overfit catastrophically, 4 another rank was "
          "lost (under torchrun), 143 stopped by SIGTERM with last.pt written at a batch "
          "boundary")
    for s in SETTINGS:
        if s.action is not None:
            p.add_argument(s.cli_flag, dest=s.name, action=s.action, help=s.help)
        else:
            extra = dict(nargs=s.nargs, const=s.const) if s.nargs else {}
            p.add_argument(s.cli_flag, dest=s.name, type=s.type, choices=s.choices,
                           default=None if s.derived else s.default, metavar=s.metavar,
                           help=s.help, **extra)
    return p


def explicit_flags(argv, p: argparse.ArgumentParser) -> set[str]:
    """The flags the user typed (even when equal to a default): ``argv`` parsed again with
    every default suppressed."""
    quiet = copy.deepcopy(p)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def resolve(args: argparse.Namespace, explicit: set[str] | None = None) -> TrainConfig:
    """Fill unset flags from the dataset's defaults and --recipe's, then check every value.
    ``explicit``: the flags the user typed, which a recipe never overrides (default: those
    set to anything but their default)."""
    if not is_dataset(args.dataset):
        raise TrainConfigError(f"--dataset must be one of {', '.join(DATASETS)} or idx:PATH, "
                               f"got {args.dataset!r}")
    args.dataset = normalize_dataset(args.dataset)
    d = dataset_defaults(args.dataset)
    values = {k: v for k, v in vars(args).items() if v is not None}
    for key, default in d.items():
        values.setdefault(key, default)
    if values.get("recipe") in RECIPES:
        if explicit is None:
            explicit = {k for k, v in values.items() if k in SETTING and v is not None
                        and (SETTING[k].derived or v != SETTING[k].default)}
        for key, value in RECIPES[values["recipe"]].for_dataset(args.dataset).items():
            if key not in explicit:
                values[key] = value
    if args.width is None and values["model"] != d["model"]:
        values["width"] = None  # the dataset's width is for its default model
    if args.alpha is None:
        values["alpha"] = default_alpha(values["method"], values["eps"], values["steps"], d)
    values.setdefault("eval_steps", values["steps"])
    values.setdefault("image_size", SETTING["image_size"].default)
    if values.get("workers") is None:
        values["workers"] = min(8, os.cpu_count() or 1) if is_folder_name(args.dataset) else 0
    if values["method"] in ONE_STEP:  # one step by definition; validation still uses PGD
        if args.steps not in (None, 1):
            raise TrainConfigError(f"--steps does not apply to --method {values['method']} "
                                   f"(one step), got {args.steps}")
        values["steps"] = 1
    values.setdefault("out", os.path.join(
        "runs", f"{args.dataset}-{values.get('recipe') or values['method']}"))
    cfg = TrainConfig(**values)
    check(cfg)
    return cfg


# --------------------------------------------------------------------------- the checks


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise TrainConfigError("--resume continues the run in --out and --overwrite replaces "
                               "it: pass one of them")


def check(cfg: TrainConfig) -> None:
    """Every rule a config must follow, before anything is written: each setting's own
    (SETTINGS), then the rules between settings."""
    def need(ok: bool, message: str):
        if not ok:
            raise TrainConfigError(message)

    for s in SETTINGS:  # types first: the rules below compare and slice the values
        why = type_error(s, getattr(cfg, s.name))
        if why is not None:
            raise TrainConfigError(why)
    need(is_dataset(cfg.dataset) or cfg.dataset.startswith(FIT_PREFIX),
         f"--dataset must be one of {DATASET_NAMES}, got {cfg.dataset!r}")
    if cfg.model not in MODELS and not cfg.model.startswith(USER_MODEL):
        try:
            check_spec_syntax(cfg.model)
        except ModelSpecError as exc:
            raise TrainConfigError(f"--model must be one of {', '.join(MODELS)}, "
                                   f"torchvision:NAME, timm:NAME or package.module:factory: "
                                   f"{exc}") from None
    for s in SETTINGS:
        value = getattr(cfg, s.name)
        if s.choices is not None and value is not None:
            need(value in s.choices,
                 f"{s.cli_flag} must be one of {', '.join(s.choices)}, got {value!r}")
        if s.valid is not None:
            shown = (format(value, "g") if isinstance(value, float) else
                     repr(value) if isinstance(value, str) else value)
            need(s.valid(value), f"{s.cli_flag} must {s.must}, got {shown}")
    need(not cfg.pretrained or cfg.model.split(":")[0] in ("torchvision", "timm"),
         f"--pretrained applies to torchvision: and timm: models, not {cfg.model}")
    folder = is_folder_name(cfg.dataset)
    need(cfg.augment is None or folder,
         f"--augment applies to folder:PATH datasets, not {cfg.dataset}")
    need(not folder or cfg.image_size >= 8, f"--image-size must be >= 8, got {cfg.image_size}")
    need(0.0 < cfg.alpha <= 1.0 or cfg.eps == 0, f"--alpha must lie in (0, 1], got {cfg.alpha:g}")
    check_resume_or_overwrite(cfg.resume, cfg.overwrite)
    need(cfg.eps_warmup <= cfg.epochs, f"--eps-warmup {cfg.eps_warmup} exceeds --epochs "
                                       f"{cfg.epochs} (eps would never reach --eps)")
    need(cfg.verify or cfg.dataset in MNIST_FORMAT or is_idx_name(cfg.dataset),
         f"--no-verify applies to {', '.join(MNIST_FORMAT)} (MNIST-format files), not "
         f"{cfg.dataset}")
    need(cfg.width is None or cfg.model in SCALABLE,
         f"--width applies to madry-cnn and small-cnn, not {cfg.model}")
    need(cfg.method not in ONE_STEP or (cfg.steps == 1 and cfg.restarts == 1),
         f"--method {cfg.method} takes one step from one start: --steps and --restarts do not "
         f"apply (got {cfg.steps} and {cfg.restarts})")
    need(cfg.method != "fgsm" or cfg.alpha == cfg.eps,
         f"--alpha does not apply to --method fgsm (its one step is eps), got {cfg.alpha:g}")
    need(not cfg.cuda_graph or (cfg.method in ("pgd", "fgsm", "fgsm-rs")
                                and cfg.attack_bn == "eval"),
         "--cuda-graph applies to --method pgd, fgsm or fgsm-rs with --attack-bn eval")
    need(not cfg.cuda_graph or cfg.device is None or cfg.device.startswith("cuda"),
         "--cuda-graph needs a CUDA --device")
    need(cfg.nfgsm_clip is None or cfg.method == "n-fgsm",
         f"--nfgsm-clip applies to --method n-fgsm, not {cfg.method}")
    need(cfg.awp is None or cfg.method in AWP_METHODS,
         f"--awp applies to --method {', '.join(AWP_METHODS)}, not {cfg.method}")


def check_setup(cfg: TrainConfig, device, world_size: int, distributed: bool) -> None:
    """The rules that need the run's device and its number of ranks (known once the process
    group is up)."""
    if cfg.cuda_graph and device.type != "cuda":
        raise TrainConfigError(f"--cuda-graph needs a CUDA device, got {device}")
    if cfg.sync_bn and distributed and device.type != "cuda":
        raise TrainConfigError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernels)")
    if cfg.batch_size % world_size:
        raise TrainConfigError(f"--batch-size {cfg.batch_size} must divide evenly over the "
                               f"{world_size} ranks")
