"""The trainer's command line: every flag, the per-dataset defaults, and the checks that turn
bad input into a clear error before anything is written."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from dataclasses import dataclass
from fractions import Fraction

from .._rundir import LOCK_NAME, is_temp_name
from ..data import DATASETS, MNIST_FORMAT, is_dataset
from ..data.folder import AUGMENTS, PREFIX as FOLDER_PREFIX, is_folder_name
from ..data.idx import PREFIX as IDX_PREFIX
from ..data.idx import is_idx_name
from ..model_specs import ModelSpecError, check_spec_syntax
from ..models import MODELS
from .stall import STALL_EPOCHS

METHODS = ("pgd", "fgsm", "fgsm-rs", "free", "trades", "standard")
SCHEDULES = ("piecewise", "cyclic", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("sgd", "adam")
SCALABLE = ("madry-cnn", "small-cnn")
# fastadv.fit's runs: the data is the caller's ("fit:tensors", "fit:Dataset", ...), and so
# may be the model ("<ClassName>": rebuilt from weights only, by the caller).
FIT_PREFIX, USER_MODEL = "fit:", "<"  # the models --width applies to
ONE_STEP = ("fgsm", "fgsm-rs")  # methods whose attack is a single step

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
# The default validation split: this fraction of the training set, at most VAL_CAP examples
# (10 % of digits' 1437 is its 144; MNIST's 60000 give 1000, a 4000-image subset 400).
VAL_FRACTION, VAL_CAP = 0.1, 1000


def dataset_defaults(dataset: str) -> dict:
    """The DATASET_DEFAULTS entry of ``dataset`` (idx:PATH and folder:PATH sets share one
    each)."""
    if is_idx_name(dataset):
        return DATASET_DEFAULTS[IDX_PREFIX + "PATH"]
    if is_folder_name(dataset):
        return DATASET_DEFAULTS[FOLDER_PREFIX + "PATH"]
    return DATASET_DEFAULTS[dataset]


def normalize_dataset(dataset: str) -> str:
    """idx:PATH and folder:PATH with PATH made absolute (the run's config names the folder
    wherever it is read from); other names unchanged."""
    for prefix in (IDX_PREFIX, FOLDER_PREFIX):
        if dataset.startswith(prefix) and len(dataset) > len(prefix):
            return prefix + os.path.abspath(os.path.expanduser(dataset[len(prefix):]))
    return dataset


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


def validation_size(cfg: "TrainConfig", n_train: int) -> int:
    """Examples held out of the ``n_train`` training examples: --val-size when given, else
    VAL_FRACTION of them, at most VAL_CAP (and at least 1)."""
    if cfg.val_size is not None:
        return cfg.val_size
    return max(1, min(VAL_CAP, round(VAL_FRACTION * n_train)))


class TrainConfigError(ValueError):
    """A training setting (a flag, --out, the data's size) that cannot work, found before or
    while setting the run up: the CLI reports it in one line and exits with status 2."""


# Changing these between a run and its resume does not change what is computed.
# (--strict only decides whether a stalled run stops; --no-verify whether the md5 is checked.)
# (--workers only decides how many processes decode: every item is made under its own seed.)
RESUMABLE = ("out", "resume", "device", "data_dir", "download", "progress", "compile",
             "save_every", "strict", "verify", "workers")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "small-cnn"
    width: int | None = None
    method: str = "pgd"
    eps: float = 0.2
    alpha: float = 0.05
    steps: int = 10
    restarts: int = 1
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    device: str | None = None
    seed: int = 0
    out: str = "runs/digits-pgd"
    resume: bool = False
    eval_every: int = 1
    eval_steps: int = 10
    eval_examples: int = 1000
    val_size: int | None = None  # None: VAL_FRACTION of the training set, at most VAL_CAP
    eps_warmup: int = 0
    strict: bool = False
    verify: bool = True
    save_every: int = 0
    free_replays: int = 4
    trades_beta: float = 6.0
    attack_bn: str = "eval"
    sync_bn: bool = False
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000
    image_size: int = 32
    augment: str | None = None  # folder:PATH: AUGMENTS; None: by image size
    workers: int = 0  # folder:PATH and streamed data: DataLoader worker processes
    pretrained: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_dataset(cls, dataset: str = "digits", **flags) -> "TrainConfig":
        """The config that ``python -m fastadv.train --dataset DATASET --flag value ...`` runs:
        ``flags`` are the CLI's flags as keywords (``batch_size=256``, ``eps=8/255``); every
        unset one takes the dataset's default (DATASET_DEFAULTS), and every value is checked
        (ValueError naming the flag). The constructor, by contrast, takes every field as
        given."""
        if not is_dataset(dataset):
            raise TrainConfigError(f"--dataset must be one of {DATASET_NAMES}, got "
                                   f"{dataset!r}")
        args = parser().parse_args(["--dataset", dataset])
        unknown = sorted(set(flags) - set(vars(args)))
        if unknown:
            raise TypeError(f"unknown training flag(s): {', '.join(unknown)}")
        for key, value in flags.items():
            setattr(args, key, value)
        return resolve(args)


def number(text: str) -> float:
    """A float, also written as a fraction: ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {text!r}")


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
        + "\n\nexit status: 0 done, 2 bad input, 3 with --strict when the training stalled")
    a = p.add_argument
    a("--dataset", type=dataset_arg, default="digits",
      help="digits (scikit-learn, offline), mnist, fashion-mnist, kmnist, cifar10, synthetic "
           "class-conditional images; idx:PATH: a folder of your own MNIST-format files "
           "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
           "t10k-labels-idx1-ubyte, each .gz or not; structural checks, no md5); or "
           "folder:PATH: your own images as PATH/train/<class>/*.png|jpg|..., with PATH/val "
           "and/or PATH/test alike if you have them (else held out of train/), decoded in "
           "--workers processes (needs torchvision)")
    a("--data-dir", help="where the dataset files are (default: $FASTADV_DATA or ~/.cache/fastadv/data)")
    a("--download", action="store_true", help="fetch missing dataset files (needs a network)")
    a("--no-verify", dest="verify", action="store_false",
      help="mnist, fashion-mnist, kmnist: skip the md5 check of the .gz files (MNIST-format "
           "data that is not the official set); the structure is still checked")
    a("--model", type=model_arg,
      help=f"architecture, inputs in [0,1], normalised inside: {', '.join(MODELS)}; "
           "torchvision:NAME (e.g. torchvision:resnet18; num_classes from the data); "
           "timm:NAME (if timm is installed); or package.module:factory, your own function "
           "called as factory(num_classes=N) and returning an nn.Module (the current "
           "directory is importable)")
    a("--pretrained", action="store_true",
      help="torchvision:/timm: models: start from their ImageNet weights, which must be on "
           "disk already (torch hub / Hugging Face cache); the classifier is replaced when the "
           "data has other classes")
    a("--width", type=int, help="width multiplier of madry-cnn/small-cnn (capacity)")
    a("--method", choices=METHODS, default="pgd",
      help="pgd: Madry PGD-AT; fgsm: one step of eps from x (Goodfellow et al.); fgsm-rs: "
           "Wong et al.'s FGSM with random start; free: Shafahi "
           "et al.'s free AT (--free-replays); trades: Zhang et al. (--trades-beta); standard: "
           "no attack")
    a("--eps", type=number, help="l-inf radius in [0, 1] pixel units; fractions like 8/255 accepted")
    a("--alpha", type=number, help="PGD step size (default: the dataset's; fgsm-rs: 1.25 eps; "
                                   "free: eps; fgsm: always eps)")
    a("--steps", type=int, help="PGD steps of the training attack (pgd, trades; fgsm and "
                                "fgsm-rs take one step)")
    a("--restarts", type=int, default=1, help="PGD random restarts during training (worst kept)")
    a("--epochs", type=int, help="passes over the training set (free: each batch replayed "
                                 "--free-replays times per pass)")
    a("--batch-size", type=int, help="global batch size (split across ranks under torchrun)")
    a("--optimizer", choices=OPTIMIZERS, help="sgd (with --momentum, Nesterov off) or adam")
    a("--lr", type=number, help="peak learning rate")
    a("--momentum", type=number, default=0.9, help="SGD momentum")
    a("--weight-decay", type=number, help="L2 weight decay (coupled, as torch.optim applies it)")
    a("--schedule", choices=SCHEDULES,
      help="piecewise: x0.1 at 50%% and 75%% of training; cyclic: linear up to the peak at 40%%, "
           "down to 0 (Wong et al.); cosine; constant")
    a("--precision", choices=PRECISIONS, default="fp32",
      help="bf16: the model under bf16 autocast (attack and training); inputs stay fp32")
    a("--channels-last", action="store_true", help="model and inputs in channels_last")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--cuda-graph", action="store_true",
      help="pgd/fgsm/fgsm-rs on CUDA: replay the whole K-step training attack from a CUDA graph "
           "(needs --attack-bn eval)")
    a("--device", help="cpu, cuda, cuda:1 (default: cuda when available; under torchrun the "
                       "local rank's GPU)")
    a("--seed", type=int, default=0,
      help="seeds the weights, the batch order, attacks and augmentation (and the digits split)")
    a("--out", help="run directory (default: runs/<dataset>-<method>)")
    a("--resume", action="store_true", help="continue the run in --out from its last.pt")
    a("--eval-every", type=int, default=1, help="evaluate on the held-out split every N epochs")
    a("--eval-steps", type=int, help="PGD steps of that evaluation (default: --steps)")
    a("--eval-examples", type=int, help="training examples evaluated each time (a fixed subset; "
                                        "the validation split is evaluated whole)")
    a("--val-size", type=int,
      help=f"training examples held out for validation (model selection); default "
           f"{VAL_FRACTION * 100:.0f}%% of the training set, at most {VAL_CAP}")
    a("--eps-warmup", type=int, default=0, metavar="N",
      help="ramp the training eps (and alpha) linearly from 0 to --eps over the first N "
           "epochs, per step (helps large eps start learning); evaluation is always at --eps")
    a("--strict", action="store_true",
      help="stop a run whose training stalls (loss at ln(classes) or clean accuracy at chance "
           "for %d epochs) and exit with status 3" % STALL_EPOCHS)
    a("--save-every", type=int, default=0,
      help="also write last.pt every N optimizer steps, mid-epoch (0: at epoch ends only)")
    a("--free-replays", type=int, default=4, help="m of free AT: replays of each batch")
    a("--trades-beta", type=number, default=6.0, help="beta of TRADES: weight of the KL term")
    a("--attack-bn", choices=("eval", "train"), default="eval",
      help="mode of the model while the training attack runs. eval (default): running "
           "BatchNorm statistics, as at test time, and needed by --cuda-graph; train: batch "
           "statistics, as Madry et al.'s and Rice et al.'s code attack")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across ranks under torchrun")
    a("--synthetic-train", type=int, default=50_000, help="synthetic: training images")
    a("--synthetic-test", type=int, default=10_000, help="synthetic: test images")
    a("--image-size", type=int,
      help="synthetic: image side (default 32); folder:PATH: images are resized and cropped "
           "to this side (default 224)")
    a("--augment", choices=AUGMENTS,
      help="folder:PATH training augmentation: rrc (random-resized-crop and flip; default for "
           "images of 64 px and more), pad-crop (padded random crop and flip, CIFAR-style; "
           "default below 64 px) or none")
    a("--workers", type=int,
      help="folder:PATH: DataLoader processes decoding images (default: min(8, CPU count)); "
           "results do not depend on it")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def explicit_flags(argv, p: argparse.ArgumentParser) -> set[str]:
    """The flags the user typed (even when equal to a default): ``argv`` parsed again with
    every default suppressed."""
    quiet = copy.deepcopy(p)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def resolve(args: argparse.Namespace) -> TrainConfig:
    """Fill unset flags from the dataset's defaults, then check every value."""
    if not is_dataset(args.dataset):
        raise TrainConfigError(f"--dataset must be one of {', '.join(DATASETS)} or idx:PATH, "
                               f"got {args.dataset!r}")
    args.dataset = normalize_dataset(args.dataset)
    d = dataset_defaults(args.dataset)
    values = {k: v for k, v in vars(args).items() if v is not None}
    for key, default in d.items():
        values.setdefault(key, default)
    if args.width is None and values["model"] != d["model"]:
        values["width"] = None  # the dataset's width is for its default model
    if args.alpha is None:
        if values["method"] == "fgsm":
            values["alpha"] = values["eps"]
        elif values["method"] == "fgsm-rs":
            values["alpha"] = 1.25 * values["eps"]
        elif values["method"] == "free":
            values["alpha"] = values["eps"]
        elif args.eps is not None:  # keep the dataset's alpha/eps ratio
            values["alpha"] = d["alpha"] * args.eps / d["eps"]
    values.setdefault("eval_steps", values["steps"])
    values.setdefault("image_size", 32)
    if values.get("workers") is None:
        values["workers"] = min(8, os.cpu_count() or 1) if is_folder_name(args.dataset) else 0
    if values["method"] in ONE_STEP:  # one step by definition; validation still uses PGD
        if args.steps not in (None, 1):
            raise TrainConfigError(f"--steps does not apply to --method {values['method']} "
                                   f"(one step), got {args.steps}")
        values["steps"] = 1
    values.setdefault("out", os.path.join("runs", f"{args.dataset}-{values['method']}"))
    cfg = TrainConfig(**values)
    check(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise TrainConfigError(message)

    need(is_dataset(cfg.dataset) or cfg.dataset.startswith(FIT_PREFIX),
         f"--dataset must be one of {DATASET_NAMES}, got {cfg.dataset!r}")
    if cfg.model not in MODELS and not cfg.model.startswith(USER_MODEL):
        try:
            check_spec_syntax(cfg.model)
        except ModelSpecError as exc:
            raise TrainConfigError(f"--model must be one of {', '.join(MODELS)}, "
                                   f"torchvision:NAME, timm:NAME or package.module:factory: "
                                   f"{exc}") from None
    need(not cfg.pretrained or cfg.model.split(":")[0] in ("torchvision", "timm"),
         f"--pretrained applies to torchvision: and timm: models, not {cfg.model}")
    folder = is_folder_name(cfg.dataset)
    need(cfg.augment is None or folder,
         f"--augment applies to folder:PATH datasets, not {cfg.dataset}")
    need(cfg.augment is None or cfg.augment in AUGMENTS,
         f"--augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}")
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(not folder or cfg.image_size >= 8, f"--image-size must be >= 8, got {cfg.image_size}")
    for flag, value, allowed in (("--method", cfg.method, METHODS),
                                 ("--optimizer", cfg.optimizer, OPTIMIZERS),
                                 ("--schedule", cfg.schedule, SCHEDULES),
                                 ("--precision", cfg.precision, PRECISIONS),
                                 ("--attack-bn", cfg.attack_bn, ("eval", "train"))):
        need(value in allowed, f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    need(0.0 <= cfg.eps <= 1.0, f"--eps must lie in [0, 1] (inputs are in [0, 1]), got {cfg.eps:g}")
    need(0.0 < cfg.alpha <= 1.0 or cfg.eps == 0, f"--alpha must lie in (0, 1], got {cfg.alpha:g}")
    for flag, value, low in (("--steps", cfg.steps, 1), ("--restarts", cfg.restarts, 1),
                             ("--epochs", cfg.epochs, 1), ("--batch-size", cfg.batch_size, 1),
                             ("--eval-every", cfg.eval_every, 1), ("--eval-steps", cfg.eval_steps, 1),
                             ("--eval-examples", cfg.eval_examples, 1),
                             ("--val-size", 1 if cfg.val_size is None else cfg.val_size, 1),
                             ("--save-every", cfg.save_every, 0),
                             ("--eps-warmup", cfg.eps_warmup, 0),
                             ("--free-replays", cfg.free_replays, 1),
                             ("--synthetic-train", cfg.synthetic_train, 2),
                             ("--synthetic-test", cfg.synthetic_test, 1),
                             ("--image-size", cfg.image_size, 4)):
        need(value >= low, f"{flag} must be >= {low}, got {value}")
    need(cfg.eps_warmup <= cfg.epochs, f"--eps-warmup {cfg.eps_warmup} exceeds --epochs "
                                       f"{cfg.epochs} (eps would never reach --eps)")
    need(cfg.verify or cfg.dataset in MNIST_FORMAT or is_idx_name(cfg.dataset),
         f"--no-verify applies to {', '.join(MNIST_FORMAT)} (MNIST-format files), not "
         f"{cfg.dataset}")
    need(cfg.width is None or cfg.width >= 1, f"--width must be >= 1, got {cfg.width}")
    need(cfg.width is None or cfg.model in SCALABLE,
         f"--width applies to madry-cnn and small-cnn, not {cfg.model}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr:g}")
    need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay:g}")
    need(0 <= cfg.momentum < 1, f"--momentum must lie in [0, 1), got {cfg.momentum:g}")
    need(cfg.method not in ONE_STEP or (cfg.steps == 1 and cfg.restarts == 1),
         f"--method {cfg.method} takes one step from one start: --steps and --restarts do not "
         f"apply (got {cfg.steps} and {cfg.restarts})")
    need(cfg.method != "fgsm" or cfg.alpha == cfg.eps,
         f"--alpha does not apply to --method fgsm (its one step is eps), got {cfg.alpha:g}")
    need(cfg.trades_beta >= 0, f"--trades-beta must be >= 0, got {cfg.trades_beta:g}")
    need(not cfg.cuda_graph or (cfg.method in ("pgd", "fgsm", "fgsm-rs")
                                and cfg.attack_bn == "eval"),
         "--cuda-graph applies to --method pgd, fgsm or fgsm-rs with --attack-bn eval")
    need(not cfg.cuda_graph or cfg.device is None or cfg.device.startswith("cuda"),
         "--cuda-graph needs a CUDA --device")
    if cfg.device is not None:
        need(cfg.device.split(":")[0] in ("cpu", "cuda"),
             f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}")


def killed_before_first_checkpoint(out: str) -> bool:
    """Whether ``out`` holds a run killed before its first checkpoint, at whatever instant:
    one that wrote its config.json and nothing else yet (no last.pt, best.pt, results or
    epoch metrics), or one killed even before that, whose folder holds nothing but the run's
    lock and the temp files of interrupted writes (or nothing at all). Such a run has nothing
    to lose: it can only start again."""
    def has(name):
        return os.path.exists(os.path.join(out, name))

    if not os.path.isdir(out):
        return False
    metrics = os.path.join(out, "metrics.jsonl")
    if any(has(n) for n in ("last.pt", "best.pt", "best.pt.pending", "results.json")) or (
            os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        return False
    return has("config.json") or all(name in (LOCK_NAME, "metrics.jsonl") or is_temp_name(name)
                                     for name in os.listdir(out))


def check_out_dir(out: str, resume: bool) -> None:
    """--out must be writable, and hold a run exactly when resuming (a run killed before its
    first last.pt holds only its config.json: it starts again); checked before anything is
    written, so a bad --out leaves nothing behind."""
    last = os.path.join(out, "last.pt")
    if resume and not os.path.isfile(last) and not killed_before_first_checkpoint(out):
        raise TrainConfigError(f"--resume: {last} does not exist (nothing to resume in --out "
                               f"{out})")
    if not resume and os.path.exists(last):
        raise TrainConfigError(f"--out {out} already holds a run (last.pt); pass --resume to "
                               "continue it or choose another --out")
    probe = out
    while not os.path.exists(probe):  # the nearest existing ancestor must let us create it
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise TrainConfigError(f"--out {out} is not writable ({probe} is not a writable directory)")
