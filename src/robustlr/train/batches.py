"""The training batches of one epoch, with the dataset index of every sample, sharded over processes.

The order and the augmentation are :func:`robustlr.data.make_loader`'s (seeded by the epoch): this module
iterates that loader's own batch sampler and collate step, so a single process sees exactly the batches the
loader yields, and additionally learns each sample's index in the training split (needed by the warm-start
bank of adversarial training). In a distributed run every process draws the same global batch (same
permutation, same augmentation of all of it) and keeps its contiguous block of it
(:meth:`~robustlr.train.distributed.Distributed.shard`), so the union of the shards is the single-process batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from robustlr.data import ImageDataset, make_loader

from .step import BatchContext

__all__ = ["Batch", "EpochBatches"]


@dataclass(frozen=True)
class Batch:
    """This process's images and labels of one global batch, and where they come from."""

    x: Tensor
    y: Tensor
    context: BatchContext


class EpochBatches:
    """The batches of epoch ``epoch`` (iterable once, like a loader pass; ``len`` is the number of batches).

    Args:
        dataset: the training split.
        batch_size: samples per global batch.
        seed: seed of the order and the augmentation (:func:`robustlr.train.trainer.epoch_seed`).
        augment: random crop and flip, as :func:`robustlr.data.make_loader` does it.
        epoch: the epoch number recorded in each batch's context.
        shard: ``n -> range`` of the positions of a global batch of ``n`` samples that this process keeps.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int, augment: bool, epoch: int,
                 shard: Callable[[int], range]) -> None:
        self.dataset = dataset
        self.loader = make_loader(dataset, batch_size, shuffle=True, seed=seed, augment=augment)
        self.epoch = epoch
        self.shard = shard

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        # make_loader passes a BatchSampler as the loader's sampler (batch_size=None): it yields index lists,
        # and the loader fetches dataset[indices] and applies collate_fn. The same two steps here keep the ids.
        for index, ids in enumerate(self.loader.sampler):
            images, labels = self.loader.collate_fn(self.dataset[ids])
            keep = self.shard(len(ids))
            positions = torch.arange(keep.start, keep.stop)
            context = BatchContext(self.epoch, index, torch.as_tensor(ids, dtype=torch.long)[positions], positions,
                                   len(ids))
            yield Batch(images[positions], labels[positions], context)
