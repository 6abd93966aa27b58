"""The image dataset every loader in robustlr returns: images and labels held as tensors (the base class of
the lazily decoded :class:`~robustlr.data.FolderDataset`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .augment import RandomCropFlip
from .seeding import AugmentSeed

__all__ = ["ImageDataset", "Index"]

Index = int | slice | list[int] | tuple[int, ...] | range | Tensor
"""What :meth:`ImageDataset.__getitem__` accepts: one position, or several (a batch)."""

Transform = Callable[[Tensor], Tensor]

CROP_PADDING = 4
"""Zero padding of the training augmentation of in-memory datasets (:class:`~robustlr.data.RandomCropFlip`)."""


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held as tensors.

    Images are kept as given: a uint8 tensor stays uint8 (one byte per value, a quarter of float32) and every
    fetch converts just the fetched images to float32, ``value / levels``; a floating tensor is stored as
    float32.  Either way what comes out (``dataset[i]``, ``dataset[ids]``, :attr:`images`, the loaders) is
    float32 in ``[0, 1]``.  The built-in datasets are stored as uint8 (``levels`` 255; the 8x8 digits 16).

    Args:
        images: ``(N, C, H, W)``: a floating tensor with values in ``[0, 1]``, or a uint8 tensor with values
            in ``[0, levels]``.
        labels: ``(N,)`` integer tensor with values in ``[0, len(classes))``; stored as int64.
        name: the dataset's name.
        classes: class names, indexed by label.
        transform: optional callable applied to the images returned by ``__getitem__``: a
            ``(C, H, W)`` tensor for an integer index, a ``(B, C, H, W)`` batch for several indices
            (as :func:`robustlr.data.make_loader` fetches them).
        indices: positions of these samples in the dataset they were taken from (set by
            :meth:`subset`); ``None`` for a dataset loaded whole.
        levels: the value of white in uint8 ``images`` (1 to 255); unused for floating images.

    Attributes:
        pixels: the stored images (uint8 or float32).
        levels: the value of white of uint8 ``pixels``; ``None`` for float32 ones.
        labels, name, classes, transform, indices: as given.
        workers: loader processes :func:`~robustlr.data.make_loader` uses by default: 0 (fetch in the main
            process: one gather per batch) for tensors in memory.
        num_classes: ``len(classes)``.
        mean, std: per-channel statistics of the images, shape ``(C,)`` (computed on first use).

    Raises:
        ValueError: naming the argument, for images that are not a 4-d floating tensor in ``[0, 1]`` or uint8
            tensor in ``[0, levels]``, labels that are not a 1-d integer tensor of matching length within range,
            or no classes.
    """

    workers: int = 0

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        name: str,
        classes: Sequence[str],
        transform: Transform | None = None,
        indices: Tensor | None = None,
        levels: int = 255,
    ) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or not (
            images.is_floating_point() or images.dtype == torch.uint8
        ):
            raise ValueError(f"images must be a 4-d (N, C, H, W) floating or uint8 tensor; got {_describe(images)}")
        if images.dtype == torch.uint8:
            if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 255:
                raise ValueError(f"levels must be an integer in [1, 255] (the value of white); got {levels!r}")
            if levels < 255 and images.numel() and images.max() > levels:
                raise ValueError(f"images must lie in [0, {levels}] (levels); got a maximum of {images.max().item()}")
        elif images.numel() and not (images.min() >= 0 and images.max() <= 1):  # NaN fails both comparisons
            raise ValueError(
                f"images must lie in [0, 1]; got values in [{images.min().item()}, {images.max().item()}]"
            )
        _set_labels(self, labels, len(images), classes, name, transform, indices)
        self.pixels = images if images.dtype == torch.uint8 else images.float()
        self.levels: int | None = levels if images.dtype == torch.uint8 else None

    @classmethod
    def from_uint8(cls, images: np.ndarray, labels: np.ndarray, *, name: str, classes: Sequence[str],
                   levels: int = 255) -> ImageDataset:
        """A dataset of uint8 images ``(N, C, H, W)`` (kept as uint8, shared with the array; image = value /
        ``levels``) and integer labels."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array; got dtype {getattr(images, 'dtype', type(images))}")
        return ImageDataset(torch.from_numpy(images), torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                            name=name, classes=classes, levels=levels)

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.pixels.shape[1:]
        return channels, height, width

    @property
    def images(self) -> Tensor:
        """All images as one float32 tensor ``(N, C, H, W)`` in ``[0, 1]``: the stored tensor itself for float32
        storage, a new float32 copy (4 bytes per value) on every access for uint8 storage."""
        return self._scaled(self.pixels)

    def _scaled(self, pixels: Tensor) -> Tensor:
        """Stored pixels as float32 images: ``value / levels`` for uint8 (the same float32 numbers as dividing
        the whole array once), the tensor itself for float32."""
        return pixels if self.levels is None else pixels.float().div_(self.levels)

    @cached_property
    def mean(self) -> Tensor:
        """Per-channel mean of the images, shape ``(C,)`` (float32)."""
        return self._statistics()[0]

    @cached_property
    def std(self) -> Tensor:
        """Per-channel standard deviation of the images (with Bessel's correction), shape ``(C,)`` (float32)."""
        return self._statistics()[1]

    def _statistics(self) -> tuple[Tensor, Tensor]:
        """(mean, std) per channel: of uint8 pixels exactly, in float64, from each channel's histogram of values
        ``h_c(v)``: ``μ_c = Σ_v h_c(v)·v/L / n``, ``σ_c² = Σ_v h_c(v)(v/L − μ_c)² / (n − 1)`` (no float copy of
        the images)."""
        if self.levels is None:
            return self.pixels.mean(dim=(0, 2, 3)), self.pixels.std(dim=(0, 2, 3))
        values = torch.arange(256, dtype=torch.float64) / self.levels
        means, stds = [], []
        for channel in range(self.pixels.shape[1]):
            counts = torch.bincount(self.pixels[:, channel].reshape(-1), minlength=256).double()
            n = counts.sum()
            mean = (counts * values).sum() / n
            means.append(mean)
            stds.append(((counts * (values - mean) ** 2).sum() / (n - 1)).sqrt())
        return torch.stack(means).float(), torch.stack(stds).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Index) -> tuple[Tensor, Tensor]:
        """The image(s) and label(s) at ``index`` (float32 images); ``transform`` is applied to the image(s)."""
        if isinstance(index, (list, tuple, range)):
            index = torch.as_tensor(index, dtype=torch.long)
        images = self._take(index)
        if self.transform is not None:
            images = self.transform(images)
        return images, self.labels[index]

    def _take(self, index: int | slice | Tensor) -> Tensor:
        """The float32 image(s) at ``index``, before ``transform``."""
        return self._scaled(self._stored(index))

    def _stored(self, index: int | slice | Tensor) -> Tensor:
        """The image(s) at ``index`` as stored (uint8 of :attr:`levels`, or float32)."""
        return self.pixels[index]

    def keys(self, positions: Tensor) -> list[int]:
        """The key of each sample at ``positions``: its index in the dataset it was loaded as (``indices``
        composed through every :meth:`subset`), which seeds its augmentation (:mod:`robustlr.data.seeding`)."""
        return (positions if self.indices is None else self.indices[positions]).tolist()

    def fetch(self, positions: Tensor, augment: AugmentSeed | None) -> tuple[Tensor, Tensor, int | None]:
        """The batch at ``positions`` (a 1-d int64 tensor), augmented when ``augment`` gives the epoch's seed:
        :class:`~robustlr.data.RandomCropFlip` (padding 4) keyed by the samples' :meth:`keys`.

        Returns ``(images, labels, levels)``: without ``transform`` the images as stored, uint8 with
        ``levels`` (a quarter of the bytes to move between processes and to a GPU; the images are
        ``images.float() / levels``, cropping and flipping commute with that conversion), or float32 with
        ``levels`` ``None``; with ``transform`` its float32 output, then augmented (``levels`` ``None``).
        """
        if self.transform is None:
            images, levels = self._stored(positions), self.levels
        else:
            images, levels = self[positions][0], None
        if augment is not None:
            images = RandomCropFlip(padding=CROP_PADDING).keyed(images, augment, self.keys(positions))
        return images, self.labels[positions], levels

    def subset(self, indices: Sequence[int] | Tensor) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (copied), keeping name, classes, transform and workers.

        Its ``indices`` attribute records the positions in this dataset's source (composing subsets).
        """
        positions = self._positions(indices)
        part = ImageDataset(self.pixels[positions], self.labels[positions], name=self.name, classes=self.classes,
                            transform=self.transform, indices=self._source(positions), levels=self.levels or 255)
        part.workers = self.workers
        return part

    def _positions(self, indices: Sequence[int] | Tensor) -> Tensor:
        """``indices`` as a 1-d int64 tensor of positions of this dataset (checked)."""
        positions = torch.as_tensor(indices, dtype=torch.long)
        if positions.ndim != 1:
            raise ValueError(f"indices must be 1-d; got shape {tuple(positions.shape)}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= len(self)):
            raise ValueError(
                f"indices must lie in [0, {len(self) - 1}]; "
                f"got values in [{positions.min().item()}, {positions.max().item()}]"
            )
        return positions

    def _source(self, positions: Tensor) -> Tensor:
        """The positions in the source dataset of the samples at ``positions``."""
        return positions if self.indices is None else self.indices[positions]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def _set_labels(dataset: ImageDataset, labels: Tensor, n: int, classes: Sequence[str], name: str,
                transform: Transform | None, indices: Tensor | None) -> None:
    """Check and set what every image dataset holds besides its images: labels, name, classes, transform,
    indices."""
    if not classes:
        raise ValueError(f"classes must name at least one class; got {classes!r}")
    if (
        not isinstance(labels, Tensor)
        or labels.shape != (n,)
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        raise ValueError(f"labels must be a ({n},) integer tensor; got {_describe(labels)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes; "
            f"got values in [{labels.min().item()}, {labels.max().item()}]"
        )
    dataset.labels = labels.long()
    dataset.name = name
    dataset.classes = list(classes)
    dataset.transform = transform
    dataset.indices = indices


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
