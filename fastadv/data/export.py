"""``python -m fastadv.data.export DATASET OUT``: a built-in dataset written as an image
folder (``OUT/train/<class>/*.png``, ``OUT/test/<class>/*.png``), the layout
``--dataset folder:OUT`` reads: a way to try the folder path offline, and to check it
against the in-memory path on the same images."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

from . import DATASETS, load_dataset


def export(name: str, out: str, *, data_dir: str | None = None, limit: int | None = None) -> dict:
    """Writes ``name``'s train and test splits as PNGs (8-bit, lossless: the pixels are the
    dataset's rounded to 1/255); returns the number of images per split."""
    data = load_dataset(name, data_dir)
    counts = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        n = len(y) if limit is None else min(limit, len(y))
        pixels = (x[:n] * 255).round().clamp(0, 255).to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()
        for i in range(n):
            folder = os.path.join(out, split, f"{int(y[i]):02d}")
            os.makedirs(folder, exist_ok=True)
            image = pixels[i]
            mode = "L" if image.shape[2] == 1 else "RGB"
            Image.fromarray(np.ascontiguousarray(image[..., 0] if mode == "L" else image),
                            mode).save(os.path.join(folder, f"{i:05d}.png"))
        counts[split] = n
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastadv.data.export",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("out", help="the folder to write (must not hold a train/ folder yet)")
    p.add_argument("--data-dir", help="where the dataset's files are (cifar10, mnist, ...)")
    p.add_argument("--limit", type=int, help="at most this many images per split")
    args = p.parse_args(argv)
    if os.path.exists(os.path.join(args.out, "train")):
        p.error(f"{args.out} already holds a train/ folder")
    counts = export(args.dataset, args.out, data_dir=args.data_dir, limit=args.limit)
    print(f"wrote {counts['train']} training and {counts['test']} test images of "
          f"{args.dataset} to {args.out} (train/<class>/, test/<class>/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
