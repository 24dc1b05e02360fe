"""A folder of one's own images as a run's data: train/ (minus what is held out), and val/
and test/ when present, each decoded in DataLoader workers."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrainConfigError
from .folder import (ImageFiles, default_augment, eval_transform, folder_path, scan_folder,
                     summary_line, train_transform)
from .sources import StreamedEval, StreamedTrain
from .splits import check_batch_size, split_indices


@dataclass
class FolderSources:
    splits: object  # fastadv.data.folder.FolderSplits
    train: StreamedTrain
    train_eval: StreamedEval
    val: StreamedEval
    test: StreamedEval
    describe: str


def folder_sources(dataset: str, *, image_size: int, augment: str | None, workers: int,
                   seed: int, val_size: int | None, eval_examples: int,
                   batch_size: int) -> FolderSources:
    """The splits of ``dataset`` (``folder:PATH``) a run uses: train/ minus what is held out;
    validation from val/ when test/ exists too, else held out of train/; test from test/,
    else val/, else held out of train/ (the held-out parts drawn by ``seed``, each of
    ``val_size`` examples, or the default size when None)."""
    try:
        splits = scan_folder(folder_path(dataset))
    except ImportError as exc:
        raise TrainConfigError(str(exc)) from None
    root, size = splits.root, image_size
    augment = augment or default_augment(size)
    train_files = ImageFiles(root, splits.train,
                                         train_transform(size, augment))
    plain_train = ImageFiles(root, splits.train, eval_transform(size))
    given = [s for s in (splits.val, splits.test) if s is not None]
    parts = split_indices(len(splits.train), val_size, seed, held_out=2 - len(given))
    train = parts[-1]
    check_batch_size(batch_size, len(train))
    held = [StreamedEval(plain_train, p, workers=workers, seed=seed) for p in parts[:-1]]
    files = [StreamedEval(ImageFiles(root, s, eval_transform(size)),
                          workers=workers, seed=seed) for s in given]
    val, test = (files if len(files) == 2 else held + files)  # held-out validation first
    k = min(eval_examples, len(train))
    label_of = lambda i: splits.train[i][1]  # noqa: E731
    origin = lambda name, s: (f"{name}/ ({len(s)})" if s is not None else None)  # noqa: E731
    test_from = origin("test", splits.test) or origin("val", splits.val) or "held out of train/"
    val_from = "val/" if len(files) == 2 else "held out of train/"
    describe = (f"{summary_line(splits)}; validation from {val_from}, test from "
                f"{test_from}; {size}x{size} images, augmentation {augment}, "
                f"{workers} loader workers")
    return FolderSources(
        splits, StreamedTrain(train_files, train, workers=workers, label_of=label_of),
        StreamedEval(plain_train, train[:k], workers=workers, seed=seed),
        val, test, describe)
