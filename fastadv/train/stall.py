"""Stall detection. Adversarial training at a large ε, or with too high a learning rate, can
collapse to a constant prediction -- training loss at ln(classes), clean accuracy at chance --
and stay there while the run otherwise looks normal (it saves best.pt and results.json all
the same). The detector reads only the run's epoch records, which every checkpoint holds,
so its state (how many stalled epochs in a row, whether it has warned) survives a resume.
"""

from __future__ import annotations

import math

STALL_EPOCHS = 3  # stalled epochs in a row before the warning
# A collapsed run's loss sits at the entropy of the labels, within a hair of ln(C) for
# balanced classes (MNIST: 0.0016 below ln 10); a learning run leaves it within an epoch.
LOSS_TOLERANCE = 0.01
# Clean training accuracy counts as chance up to this much above the commonest class's share
# (what a constant prediction scores at best).
ACCURACY_MARGIN = 0.02


def chance_accuracy(labels) -> float:
    """The accuracy of always predicting the commonest class of ``labels`` (a tensor)."""
    return labels.bincount().max().item() / max(len(labels), 1)


def stall_reasons(record: dict, num_classes: int, chance: float) -> list[str]:
    """Why the epoch of ``record`` looks stalled ([] when it does not): "loss" when the
    training cross-entropy (TRADES: its natural CE) is within LOSS_TOLERANCE of
    ln(num_classes), "accuracy" when clean training accuracy (evaluated epochs only) is at
    most ``chance`` + ACCURACY_MARGIN."""
    reasons = []
    ce = record.get("loss_parts", {}).get("natural_ce", record["loss"])
    if abs(ce - math.log(num_classes)) <= LOSS_TOLERANCE:
        reasons.append("loss")
    acc = record.get("train_clean_acc")
    if acc is not None and acc <= chance + ACCURACY_MARGIN:
        reasons.append("accuracy")
    return reasons


def stalled_record(history: list) -> dict | None:
    """The record that carries the run's stall warning, if it has warned."""
    return next((r for r in history if "stall_warning" in r), None)


def stall_warning(history: list, num_classes: int, chance: float, cfg) -> str | None:
    """The warning to give at the end of the last epoch of ``history``, or None: given once,
    when each of the last STALL_EPOCHS epochs looks stalled (see stall_reasons)."""
    if stalled_record(history[:-1]) is not None or len(history) < STALL_EPOCHS:
        return None
    tail = history[-STALL_EPOCHS:]
    reasons = [stall_reasons(r, num_classes, chance) for r in tail]
    if not all(reasons):
        return None
    return _message(tail, reasons, num_classes, chance, cfg)


def _message(tail: list, reasons: list, num_classes: int, chance: float, cfg) -> str:
    first, last = tail[0]["epoch"], tail[-1]["epoch"]
    seen = []
    if any("loss" in r for r in reasons):
        losses = ", ".join(f"{r['loss']:.4f}" for r in tail)
        seen.append(f"the training loss stayed at ln({num_classes}) = "
                    f"{math.log(num_classes):.4f}, a uniform guess ({losses})")
    if any("accuracy" in r for r in reasons):
        accs = ", ".join(f"{r['train_clean_acc']:.1%}" for r in tail if "train_clean_acc" in r)
        seen.append(f"clean training accuracy stayed at chance ({accs}; the commonest class "
                    f"is {chance:.1%})")
    text = (f"training has stalled: in epochs {first}-{last} " + " and ".join(seen)
            + ". The model has most likely collapsed to a constant prediction. ")
    if cfg.method == "standard":
        return text + (f"Likely cause: the learning rate is too high (--lr {cfg.lr:g}; try "
                       "3-10x lower). " + _continue(cfg))
    warmup = min(cfg.epochs, max(2, min(10, cfg.epochs // 3)))  # a third of the run, 2-10
    if cfg.eps_warmup:
        ramp = (f"This run already ramps eps over {cfg.eps_warmup} epochs; a lower --lr or "
                f"a longer --eps-warmup (e.g. {min(cfg.epochs, max(warmup, 2 * cfg.eps_warmup))}) "
                "may help.")
    else:
        ramp = (f"An eps warm-up helps: --eps-warmup N ramps eps linearly from 0 to "
                f"{cfg.eps:.4g} over the first N epochs (e.g. --eps-warmup {warmup}), as is "
                f"done for large-eps MNIST training.")
    return text + (f"Likely causes: the learning rate is too high for this eps (--lr "
                   f"{cfg.lr:g}; try 3-10x lower), or eps = {cfg.eps:.4g} is too large to "
                   f"start from. {ramp} " + _continue(cfg))


def _continue(cfg) -> str:
    return ("--strict: the run stops here (exit status 3)." if cfg.strict else
            "The run goes on; --strict stops a stalled run (exit status 3).")
