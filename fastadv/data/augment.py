"""Batch augmentation on the data's own device (GPU-resident training, as airbench does)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_crop_flip(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Per example, an independent random crop of the zero-padded image and a horizontal flip
    with probability 1/2 (the standard CIFAR-10 augmentation): x [N, C, H, W] -> a new tensor
    of the same shape, dtype, device and memory format (channels_last stays channels_last).

    Randomness, drawn on x's device from `generator` (else that device's default generator),
    in this order: the offsets ``randint(0, 2 * pad + 1, (N, 2))`` (column 0: rows, 1: columns;
    crop k is padded[k, :, oy:oy + H, ox:ox + W]), then the flips ``randint(0, 2, (N,))``.

    Cost: no Python loop and no padded copy: one gather of N*C*H*W elements straight from x
    (indices clamped into the image) and one masked fill that zeroes the pixels that came from
    the padding, plus tiny [N, H, W] index kernels: cheaper than padding then indexing."""
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images [N, C, H, W], got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), device=x.device, generator=generator)
    flip = torch.randint(0, 2, (n,), device=x.device, generator=generator).bool()
    # Rows and columns of x each output pixel reads; outside [0, H) x [0, W) is padding.
    rows = offsets[:, 0:1] - pad + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[:, 1:2] - pad + torch.arange(w, device=x.device)  # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    padding = ((rows < 0) | (rows >= h))[:, :, None] | ((cols < 0) | (cols >= w))[:, None, :]
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # [N, H, W]
    if channels_last:  # gather along H*W with C innermost, so the result is channels_last
        flat = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of channels_last memory
        out = flat.gather(1, index.view(n, h * w, 1).expand(n, h * w, c)).view(n, h, w, c)
        return out.masked_fill_(padding[:, :, :, None], 0).permute(0, 3, 1, 2)
    flat = x.reshape(n, c, h * w)
    out = flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    return out.masked_fill_(padding[:, None], 0)
