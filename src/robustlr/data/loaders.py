"""Seeded batch loaders (in the main process or streaming from worker processes) and seeded train/validation
splits for :class:`ImageDataset` and :class:`~robustlr.data.FolderDataset`.

A loader asks its dataset for whole batches (:meth:`ImageDataset.fetch`): a batch sampler,
:class:`SeededBatches`, runs in the main process and hands each batch's positions, and the epoch's augmentation
seed, to whoever fetches it (the main process, or one of ``workers`` processes, which decode and augment in
parallel).  A sample's augmentation depends on the seed and its key only (:mod:`robustlr.data.seeding`), so the
batches are the same whatever the number of workers, and a shard of a batch (a distributed run) fetches just its
samples.  A ``ValueError`` raised while fetching (a corrupt image) reaches the caller as that ``ValueError``,
from any worker.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..checks import check_fraction, check_int
from .image_dataset import ImageDataset
from .seeding import AugmentSeed

__all__ = ["BatchLoader", "BatchRequest", "Fetched", "SeededBatches", "make_loader", "train_val_split"]

Shard = Callable[[int], range]
"""``n -> range``: the positions of a batch of ``n`` samples that this process fetches."""


def _whole(n: int) -> range:
    return range(n)


@dataclass(frozen=True)
class BatchRequest:
    """One batch to fetch.

    Attributes:
        index: the batch's number in the epoch (from 0).
        positions: the dataset positions fetched, this shard's part of the batch (1-d int64, CPU).
        augment: the epoch's augmentation seed, or ``None`` for no augmentation.
        size: the number of samples of the whole batch (all shards).
        offset: the position in the whole batch of the first sample fetched.
    """

    index: int
    positions: Tensor
    augment: AugmentSeed | None
    size: int
    offset: int


@dataclass(frozen=True)
class Fetched:
    """A fetched batch: its images (as the dataset stores them: uint8 of ``levels``, or float32 with ``levels``
    ``None``), int64 labels and the request they answer.  Batches travel from worker processes (and to a GPU) in
    the stored dtype, a quarter of the bytes of float32 for uint8; :meth:`floats` converts them."""

    images: Tensor
    labels: Tensor
    request: BatchRequest
    levels: int | None

    def floats(self, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` on ``device`` (default: where they are), the images as float32 ``value / levels``
        (converted after the copy, on the device)."""
        images, labels = self.images, self.labels
        if device is not None:
            pinned = images.is_pinned()  # page-locked: the copy may overlap the work already queued
            images, labels = images.to(device, non_blocking=pinned), labels.to(device, non_blocking=pinned)
        return (images if self.levels is None else images.float().div_(self.levels)), labels

    def pin_memory(self) -> Fetched:
        """The batch in page-locked memory (called by the loader's ``pin_memory`` thread)."""
        return Fetched(self.images.pin_memory(), self.labels.pin_memory(), self.request, self.levels)


@dataclass(frozen=True)
class _Failure:
    """A ``ValueError`` raised while fetching, carried back to the main process as data (a worker's exception
    would reach it wrapped, its message behind a traceback)."""

    message: str


class SeededBatches(Sampler[BatchRequest]):
    """The batches of each pass over ``n`` samples: the order of ``torch.randperm(n)`` drawn from a private
    generator seeded with ``seed`` (each pass draws the next permutation; dataset order without ``shuffle``), cut
    into batches of ``batch_size``, each restricted to ``shard``.

    Pass ``t`` (from 0) augments with the seed ``(seed, t)`` when ``augment`` is set. :meth:`reseed` starts
    again from another seed (a training epoch: the pass is then 0 again), optionally skipping the first batches
    without drawing them.

    Raises:
        ValueError: for ``n < 0``, ``batch_size < 1``, ``seed < 0``.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 augment: bool = False, shard: Shard = _whole) -> None:
        self.n = check_int("n", n, 0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.shuffle, self.drop_last, self.augment, self.shard = shuffle, drop_last, augment, shard
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int, start: int = 0) -> None:
        """Restart from ``seed`` (the next pass is pass 0 of its order and augmentation), beginning at batch
        ``start`` (earlier batches are skipped, not fetched)."""
        self.seed = check_int("seed", seed, 0)
        self.start = check_int("start", start, 0)
        self.generator.manual_seed(self.seed)
        self.passes = 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[BatchRequest]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        augment = (self.seed, self.passes) if self.augment else None
        start, self.passes, self.start = self.start, self.passes + 1, 0
        for index in range(start, len(self)):
            batch = order[index * self.batch_size : (index + 1) * self.batch_size]
            keep = self.shard(len(batch))
            yield BatchRequest(index, batch[keep.start : keep.stop], augment, len(batch), keep.start)


class _Fetch(Dataset):
    """The dataset as the loader sees it: a request in, its :class:`Fetched` batch (or a :class:`_Failure`) out."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: BatchRequest) -> Fetched | _Failure:
        try:
            images, labels, levels = self.dataset.fetch(request.positions, request.augment)
        except ValueError as error:
            return _Failure(str(error))
        return Fetched(images, labels, request, levels)


def _keep(item: Fetched | _Failure) -> Fetched | _Failure:
    """Collate step: a fetched batch is already stacked."""
    return item


class BatchLoader(DataLoader):
    """A ``DataLoader`` of :class:`SeededBatches` requests: iterating it yields ``(images, labels)`` (float32
    images, converted in this process), :meth:`fetched` the :class:`Fetched` batches (as stored, with their
    requests)."""

    def fetched(self) -> Iterator[Fetched]:
        """The batches of one pass, with the request each answers.

        Raises:
            ValueError: the first error met while fetching (e.g. naming a corrupt file).
        """
        for item in super().__iter__():
            if isinstance(item, _Failure):
                raise ValueError(item.message)
            yield item

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:  # type: ignore[override]
        return (item.floats() for item in self.fetched())


def _worker_start(processes: int) -> str | None:
    """How worker processes start: forked where the platform can (Linux), also inside the ``spawn``-ed ranks of
    ``robustlr train --nproc`` (whose default start method is ``spawn``: each worker would import torch and
    robustlr again, seconds per loader); the platform's default elsewhere (macOS, Windows)."""
    return "fork" if processes > 0 and sys.platform == "linux" else None


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
    *,
    workers: int | None = None,
    pin_memory: bool = False,
    shard: Shard = _whole,
) -> BatchLoader:
    """A loader yielding ``(images, labels)`` batches of ``dataset``, reproducible from ``seed``.

    Each batch is fetched whole (:meth:`ImageDataset.fetch`: one gather for tensors in memory, one decode per
    file for a folder).  The order comes from a private ``torch.Generator`` seeded with ``seed``: the same seed
    gives the same sequence of epochs, a different seed a different one, and the global RNG is untouched.

    Args:
        dataset: the :class:`ImageDataset` (or :class:`~robustlr.data.FolderDataset`) to iterate.
        batch_size: images per batch, >= 1.
        shuffle: draw a new random order every epoch (else dataset order).
        seed: non-negative seed of the order and of the augmentation.
        drop_last: drop a final batch smaller than ``batch_size``.
        augment: the dataset's training augmentation after its ``transform``, seeded per sample by
            ``(seed, epoch of this loader, the sample's key)``: the random crop with padding 4 and flip
            (:class:`RandomCropFlip`), or for a folder with ``image_size`` the random-resized crop and flip.
        workers: processes that fetch batches in parallel (persistent across epochs; ``pin_memory`` pins their
            output for fast copies to a GPU); ``None``: the dataset's ``workers`` (0 for tensors in memory, the
            CPUs up to 4 for a folder); 0: the main process.
        pin_memory: page-lock the batches (set it when they go to CUDA).
        shard: ``n -> range`` of the positions of each batch to fetch (a process's shard; default all).

    Raises:
        ValueError: for a dataset that is not an ``ImageDataset``, ``batch_size < 1``, ``seed < 0`` or
            ``workers < 0``.
    """
    _check_dataset(dataset)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    processes = dataset.workers if workers is None else check_int("workers", workers, 0)
    batches = SeededBatches(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            augment=augment, shard=shard)
    return BatchLoader(
        _Fetch(dataset),
        batch_size=None,
        sampler=batches,
        collate_fn=_keep,
        num_workers=processes,
        persistent_workers=processes > 0,
        multiprocessing_context=_worker_start(processes),
        pin_memory=pin_memory,
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
