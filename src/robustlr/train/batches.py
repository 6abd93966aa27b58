"""The training batches of every epoch of a run, with the dataset index of every sample, sharded over processes.

One loader (:func:`robustlr.data.make_loader`, its worker processes kept for the whole run) serves every epoch:
epoch ``e`` reseeds its order and augmentation with the epoch's seed (:func:`robustlr.train.trainer.epoch_seed`),
so a single process sees exactly the batches of ``make_loader(train, batch_size, shuffle=True, seed=epoch_seed,
augment=augment)``'s first pass, and additionally learns each sample's index in the training split (needed by the
warm-start bank of adversarial training). In a distributed run every process draws the same global order and
fetches only its contiguous block of each global batch (:meth:`~robustlr.train.distributed.Distributed.shard`):
augmentation is seeded per sample (:mod:`robustlr.data.seeding`), so the union of the shards is the
single-process batch, and a resumed epoch skips its first batches without fetching them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from robustlr.data import ImageDataset, make_loader

from .step import BatchContext

__all__ = ["Batch", "TrainBatches"]


@dataclass(frozen=True)
class Batch:
    """This process's images (float32) and labels of one global batch, on the run's device, and where they come
    from."""

    x: Tensor
    y: Tensor
    context: BatchContext


class TrainBatches:
    """The batches of each epoch of a run (``len`` is the number of batches of an epoch).

    Args:
        dataset: the training split.
        batch_size: samples per global batch.
        augment: the dataset's training augmentation (:func:`robustlr.data.make_loader`).
        shard: ``n -> range`` of the positions of a global batch of ``n`` samples that this process fetches.
        device: where the batches go: uint8 images are copied there as uint8 and converted to float32 there
            (a quarter of the bytes to copy; on CUDA the copies are asynchronous from page-locked memory).
        workers: loader processes (``None``: the dataset's default: 0 in memory, up to 4 for a folder).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, augment: bool, shard: Callable[[int], range], *,
                 device: torch.device = torch.device("cpu"), workers: int | None = None) -> None:
        self.device = device
        self.loader = make_loader(dataset, batch_size, shuffle=True, augment=augment, workers=workers,
                                  pin_memory=device.type == "cuda", shard=shard)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """This process's part of the batches ``start, start + 1, …`` of epoch ``epoch``, ordered and augmented
        from ``seed``; each batch's context records the epoch."""
        self.loader.sampler.reseed(seed, start)
        for fetched in self.loader.fetched():
            request = fetched.request
            positions = torch.arange(request.offset, request.offset + len(request.positions))
            context = BatchContext(epoch, request.index, request.positions, positions, request.size)
            yield Batch(*fetched.floats(self.device), context)
