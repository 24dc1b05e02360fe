"""Catastrophic overfitting (Wong et al. 2020): a model trained on single-step attacks can,
within an epoch, learn to mask its gradient, so that its own one-step attack stops working
while PGD still succeeds; its PGD accuracy collapses to near zero while the training loss
looks healthy. Wong et al.'s check: on fixed training examples, compare PGD accuracy with
the accuracy under the method's own attack.

The trainer evaluates the same fixed training examples under PGD at each evaluation
(``train_robust_acc``); for single-step methods it also records ``train_own_attack_acc``.
The record's verdict depends on that record only, so it survives a resume; the warning is
given once per run (kept in the history, like the stall warning).
"""

from __future__ import annotations

import torch

from ..attacks.core import attack_mode, precision_autocast
from . import distributed
from .validation import EVAL_STREAMS

# Collapsed (Wong et al.'s signature): PGD accuracy fell below COLLAPSE_DROP of its best
# earlier value while the method's own attack leaves at least COLLAPSE_GAP more accuracy
# than PGD (the gradient it follows no longer points to the adversarial examples). A model
# that is merely weak against PGD, with no fall, is no collapse.
COLLAPSE_DROP = 0.5
COLLAPSE_GAP = 0.2


def own_attack_accuracy(method, examples, cfg, ctx: distributed.Context,
                        batch_size: int) -> float:
    """Accuracy (eval mode) on ``examples`` under the method's own training attack at --eps,
    its random draws on a stream of its own (the training's RNG state is left as it was)."""
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    correct = 0
    model = method.attack_model
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0x0FF5_0000 + EVAL_STREAMS["train"] * 7919 + cfg.seed * 4099
                          + ctx.rank)
        for x, y in examples.batches(batch_size, ctx.rank, ctx.world_size, ctx.device):
            x_adv = method.own_attack(x, y)  # in the mode the training attack runs in
            with attack_mode(model), torch.no_grad(), \
                    precision_autocast(ctx.device.type, cfg.precision):
                correct += (model(x_adv).argmax(1) == y).sum().item()
    count = examples.local_count(ctx.rank, ctx.world_size)
    correct, count = distributed.all_sum(ctx, [correct, count])
    return correct / max(count, 1)


def _pgd_accuracy(record: dict) -> float | None:
    """The trained (not averaged) weights' PGD accuracy on the fixed training examples."""
    return record.get("raw_train_robust_acc", record.get("train_robust_acc"))


def collapsed(history: list[dict]) -> bool:
    """Whether the last record of ``history`` shows a collapse against the earlier ones."""
    record = history[-1]
    own, pgd = record.get("train_own_attack_acc"), _pgd_accuracy(record)
    earlier = [a for a in map(_pgd_accuracy, history[:-1]) if a is not None]
    return (own is not None and pgd is not None and bool(earlier)
            and pgd < COLLAPSE_DROP * max(earlier) and own - pgd >= COLLAPSE_GAP)


def collapse_warning(history: list[dict], method: str) -> str | None:
    """The warning for the last record of ``history`` when it shows a collapse and no earlier
    record warned."""
    record = history[-1]
    if not collapsed(history) or any("overfit_warning" in r for r in history[:-1]):
        return None
    best = max(a for a in map(_pgd_accuracy, history[:-1]) if a is not None)
    return (f"catastrophic overfitting at epoch {record['epoch']}: on the fixed training "
            f"examples, PGD accuracy fell to {_pgd_accuracy(record):.1%} (best earlier "
            f"{best:.1%}) against "
            f"{record['train_own_attack_acc']:.1%} under {method}'s own attack (its gradient "
            "is masked: the model is robust to the one-step attack only). best.pt stays the "
            "best epoch by validation PGD accuracy; train with --method n-fgsm or pgd (or a "
            "smaller --eps) instead; --strict stops such a run (exit status 3)")


def overfit_record(history: list[dict]) -> dict | None:
    """The record that warned of catastrophic overfitting, or None."""
    return next((r for r in history if "overfit_warning" in r), None)
