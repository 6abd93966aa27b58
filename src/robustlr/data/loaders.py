"""Seeded batch loaders and seeded train/validation splits for :class:`ImageDataset`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from .augment import RandomCropFlip
from ..checks import check_fraction, check_int
from .image_dataset import ImageDataset

__all__ = ["make_loader", "train_val_split"]


class _AugmentImages:
    """Collate step of :func:`make_loader`: apply an augmentation to a fetched ``(images, labels)`` batch."""

    def __init__(self, augmentation: RandomCropFlip) -> None:
        self.augmentation = augmentation

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return self.augmentation(images), labels


def _keep(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate step of :func:`make_loader` without augmentation: the batch is already stacked."""
    return batch


def _check_dataset(dataset: object) -> ImageDataset:
    if not isinstance(dataset, ImageDataset):
        raise ValueError(f"dataset must be a robustlr.data.ImageDataset; got {type(dataset).__name__}")
    return dataset


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    augment: bool = False,
) -> DataLoader:
    """A ``DataLoader`` yielding ``(images, labels)`` batches of ``dataset``, reproducible from ``seed``.

    Each batch is fetched with one tensor index (``dataset[list_of_indices]``), not sample by
    sample, so loading costs one gather per batch.  The shuffling order comes from a private
    ``torch.Generator`` seeded with ``seed``: the same seed gives the same sequence of epochs, a
    different seed a different one, and the global RNG is untouched.  Loading runs in the main
    process.

    Args:
        dataset: the :class:`ImageDataset` to iterate.
        batch_size: images per batch, >= 1.
        shuffle: draw a new random order every epoch (else dataset order).
        seed: non-negative seed of the order and of the augmentation.
        drop_last: drop a final batch smaller than ``batch_size``.
        augment: apply :class:`RandomCropFlip` (padding 4, seeded with ``seed``) to every batch,
            after the dataset's own ``transform``.

    Raises:
        ValueError: for a dataset that is not an ``ImageDataset``, ``batch_size < 1`` or ``seed < 0``.
    """
    _check_dataset(dataset)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    if shuffle:
        order: Sampler[int] = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        order = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=BatchSampler(order, batch_size, drop_last),
        collate_fn=_AugmentImages(RandomCropFlip(padding=4, seed=seed)) if augment else _keep,
        # The loader draws a per-epoch base seed (used by worker processes); a private generator
        # keeps that draw off the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def train_val_split(
    dataset: ImageDataset, val_fraction: float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Split ``dataset`` at random into disjoint (train, validation) datasets that together cover it.

    The validation part holds ``floor(val_fraction * len(dataset))`` samples chosen by a permutation
    seeded with ``seed``; both parts keep dataset order, and their ``indices`` attributes give the
    positions of their samples in ``dataset``.

    Args:
        dataset: the :class:`ImageDataset` to split.
        val_fraction: fraction held out for validation, in ``[0, 1)``; 0 gives an empty validation set.
        seed: non-negative seed of the permutation.

    Raises:
        ValueError: for a dataset that is not an ``ImageDataset``, ``val_fraction`` outside ``[0, 1)``,
            or ``seed < 0``.
    """
    _check_dataset(dataset)
    fraction = check_fraction("val_fraction", val_fraction)
    check_int("seed", seed, 0)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    n_val = int(fraction * len(dataset))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return dataset.subset(train), dataset.subset(val)
