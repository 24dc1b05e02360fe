"""Where the trainer's batches come from: tensors already on the device (the fast path), or
a map-style ``Dataset`` streamed through a ``DataLoader`` (worker processes, pinned memory,
the next batch copied while the attack runs on this one).

Both paths take the same batches: an epoch's order is a permutation drawn from
``(seed, epoch)`` (:func:`batch_order`), each global batch split into equal per-rank slices
(the role of a ``DistributedSampler``, but the global batch is the same one a single process
takes). A streamed item is made under its own seed, drawn from ``(seed, epoch, position)``,
so random transforms in the dataset repeat exactly on resume whatever the number of workers
or where the run was killed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .augment import random_crop_flip


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """[steps, batch_size] example indices of an epoch (the incomplete last batch dropped):
    the same on every rank and recomputable on resume."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    steps = n // batch_size
    return perm[:steps * batch_size].view(steps, batch_size)


def item_seeds(seed: int, epoch: int, positions: Tensor) -> Tensor:
    """One 63-bit seed per item position of an epoch (a splitmix-style hash: nearby positions
    get unrelated streams)."""
    base = _wrap(((seed * 1_000_003 + epoch) * 0x1_0000_0001) & (2**64 - 1))  # any seed
    z = positions.to(torch.int64) + base
    for shift, mult in ((30, 0x3F58476D1CE4E5B9), (27, 0x14C85DDE2C5A2C27)):
        z = (z ^ (z >> shift)) * _wrap(mult)
    return (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def _wrap(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, seed)``: each item is made with torch's and Python's
    generators seeded by ``seed``, so its random transform is a function of the key alone.
    In the main process (no workers) the trainer's own generator states are restored."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if get_worker_info() is not None:  # a worker's generators are its own
            _seed_host(seed)
            return self.dataset[index]
        state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            _seed_host(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def _seed_host(seed: int) -> None:
    """The host generators a transform may draw from: torch's CPU one (torch.manual_seed
    would reseed the CUDA generators too, the training's), Python's and NumPy's."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def to_device(batch, device: torch.device):
    x, y = batch[0], batch[1]
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    return (x.to(device, non_blocking=True), y.to(device, non_blocking=True).long())


def prefetched(batches, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``batches`` moved to ``device``, the next one's copy queued before this one is used
    (from pinned memory the copy overlaps the attack's kernels)."""
    it = iter(batches)
    upcoming = next(it, None)
    upcoming = None if upcoming is None else to_device(upcoming, device)
    while upcoming is not None:
        current = upcoming
        upcoming = next(it, None)
        upcoming = None if upcoming is None else to_device(upcoming, device)
        yield current


# --------------------------------------------------------------------------- training data


class TensorTrain:
    """Training examples held as tensors on the device (gathered per batch there)."""

    streamed = False

    def __init__(self, x: Tensor, y: Tensor, *, augment: bool):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self):
        return len(self.y)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def labels(self, limit: int) -> Tensor:
        return self.y[:limit]

    def epoch(self, *, epoch: int, start: int, batch_size: int, seed: int, rank: int,
              world_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        # On the device once per epoch: a host-to-device copy per step would wait for the GPU.
        order = batch_order(len(self), batch_size, seed, epoch).to(self.x.device)
        local = batch_size // world_size
        for i in range(start, len(order)):
            idx = order[i, rank * local:(rank + 1) * local]
            x = self.x[idx]
            yield (random_crop_flip(x) if self.augment else x), self.y[idx]


class StreamedTrain:
    """Training examples read from ``dataset`` (positions ``indices`` of it) by a
    ``DataLoader`` per epoch. ``batches_of_epoch`` (a user ``DataLoader``'s own sampler)
    replaces the permutation when given: it returns an epoch's global batches as lists of
    dataset indices."""

    streamed = True

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None, *,
                 workers: int = 0, collate_fn: Callable | None = None, augment: bool = False,
                 batches_of_epoch: Callable[[int], list[list[int]]] | None = None,
                 prefetch_factor: int | None = None, label_of: Callable | None = None):
        self.dataset, self.workers, self.collate_fn = dataset, workers, collate_fn
        self.indices = (torch.arange(len(dataset)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.int64))
        self.augment, self.batches_of_epoch = augment, batches_of_epoch
        self.prefetch_factor, self.label_of = prefetch_factor, label_of

    def __len__(self):
        return len(self.indices)

    def steps_per_epoch(self, batch_size: int) -> int:
        if self.batches_of_epoch is not None:
            return len(self.batches_of_epoch(0))
        return len(self) // batch_size

    def labels(self, limit: int) -> Tensor:
        """The first ``limit`` training labels (for the chance level): ``label_of`` reads
        them without decoding; otherwise the items are read."""
        first = self.indices[:limit].tolist()
        if self.label_of is not None:
            return torch.as_tensor([int(self.label_of(i)) for i in first])
        return torch.as_tensor([int(self.dataset[i][1]) for i in first])

    def epoch(self, *, epoch: int, start: int, batch_size: int, seed: int, rank: int,
              world_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        if self.batches_of_epoch is not None:
            global_batches = torch.as_tensor(self.batches_of_epoch(epoch), dtype=torch.int64)
            batch_size = global_batches.shape[1]
            positions = torch.arange(global_batches.numel()).view_as(global_batches)
        else:
            positions = batch_order(len(self), batch_size, seed, epoch)
            global_batches = self.indices[positions]
        local = batch_size // world_size
        part = slice(rank * local, (rank + 1) * local)
        keys = [list(zip(b[part].tolist(), s[part].tolist()))
                for b, s in zip(global_batches[start:],
                                item_seeds(seed, epoch, positions[start:]))]
        loader = DataLoader(SeededItems(self.dataset), batch_sampler=keys,
                            num_workers=self.workers, collate_fn=self.collate_fn,
                            pin_memory=device.type == "cuda", generator=_own_generator(),
                            prefetch_factor=self.prefetch_factor if self.workers else None)
        for x, y in prefetched(loader, device):
            yield (random_crop_flip(x) if self.augment else x), y


# --------------------------------------------------------------------------- evaluation data


class TensorEval:
    """Evaluation examples as tensors on the device."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def batches(self, batch_size: int, rank: int, world_size: int, device: torch.device):
        x, y = self.x.tensor_split(world_size)[rank], self.y.tensor_split(world_size)[rank]
        return zip(x.split(batch_size), y.split(batch_size))

    def local_count(self, rank: int, world_size: int) -> int:
        return len(self.y.tensor_split(world_size)[rank])


class StreamedEval:
    """Evaluation examples ``indices`` of ``dataset``, read in order (each rank a contiguous
    slice, as :class:`TensorEval` splits), every item under a fixed seed: every evaluation
    sees the same inputs even when the dataset's transform is random."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None, *,
                 workers: int = 0, collate_fn: Callable | None = None, seed: int = 0):
        self.dataset, self.workers, self.collate_fn, self.seed = dataset, workers, collate_fn, seed
        self.indices = (torch.arange(len(dataset)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.int64))

    def __len__(self):
        return len(self.indices)

    def local_count(self, rank: int, world_size: int) -> int:
        return len(self.indices.tensor_split(world_size)[rank])

    def batches(self, batch_size: int, rank: int, world_size: int, device: torch.device):
        mine = self.indices.tensor_split(world_size)[rank]
        seeds = item_seeds(self.seed, 0, torch.arange(len(self.indices)).tensor_split(
            world_size)[rank])
        keys = list(zip(mine.tolist(), seeds.tolist()))
        sampler = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
        loader = DataLoader(SeededItems(self.dataset), batch_sampler=sampler,
                            num_workers=self.workers, collate_fn=self.collate_fn,
                            pin_memory=device.type == "cuda", generator=_own_generator())
        return prefetched(loader, device)


def _own_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from its generator, by default the global
    one: the training stream (attack starts) would depend on the loading. The seed is unused
    (every item is seeded by its key)."""
    return torch.Generator().manual_seed(0)
