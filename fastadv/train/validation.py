"""How the trainer measures a model: clean and PGD accuracy on a split, every evaluation of
a split drawing the same random starts."""

from __future__ import annotations

import torch
from torch import nn

from ..accuracy import correct_over_batches
from ..data.sources import StreamedEval, TensorEval
from . import distributed


# Which examples an evaluation attacks: each set has its own fixed stream of random starts.
EVAL_STREAMS = {"train": 1, "val": 2, "test": 3}


def eval_generator(cfg, split: str, ctx: distributed.Context) -> torch.Generator:
    """A fresh generator (on the rank's device: no host round trip per batch) for the random
    starts of one evaluation of ``split``, seeded from the run's seed: every evaluation of a
    split draws the same starts (so identical weights score identically: best.pt vs last.pt,
    one epoch vs the next), and the training stream (the default generators, which
    checkpoints hold) is never touched."""
    seed = 0x5EED_0000_0000 + EVAL_STREAMS[split] * 2**32 + cfg.seed * 4099 + ctx.rank
    return torch.Generator(device=ctx.device).manual_seed(seed)


def clean_and_robust_accuracy(model: nn.Module, examples: TensorEval | StreamedEval,
                              cfg, ctx: distributed.Context, precision: str,
                              batch_size: int, split: str):
    """(clean accuracy, PGD-k accuracy) at ε with α = 2.5ε/k (Madry et al.), one random start
    from ``split``'s fixed evaluation generator, the model in eval mode; examples split
    across ranks (dense slices, so the fused op takes its fast path), counts summed."""
    batches = examples.batches(batch_size, ctx.rank, ctx.world_size, ctx.device)
    clean, robust = correct_over_batches(model, batches, eps=cfg.eps, steps=cfg.eval_steps,
                                         precision=precision,
                                         generator=eval_generator(cfg, split, ctx))
    count = examples.local_count(ctx.rank, ctx.world_size)
    clean, robust, count = distributed.all_sum(ctx, [clean, robust, count])
    return clean / max(count, 1), robust / max(count, 1)
