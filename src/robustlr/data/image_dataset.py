"""The in-memory image dataset every loader in robustlr returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "Index"]

Index = int | slice | list[int] | tuple[int, ...] | range | Tensor
"""What :meth:`ImageDataset.__getitem__` accepts: one position, or several (a batch)."""

Transform = Callable[[Tensor], Tensor]


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held as tensors.

    Args:
        images: ``(N, C, H, W)`` floating tensor with values in ``[0, 1]``; stored as float32.
        labels: ``(N,)`` integer tensor with values in ``[0, len(classes))``; stored as int64.
        name: the dataset's name.
        classes: class names, indexed by label.
        transform: optional callable applied to the images returned by ``__getitem__``: a
            ``(C, H, W)`` tensor for an integer index, a ``(B, C, H, W)`` batch for several indices
            (as :func:`robustlr.data.make_loader` fetches them).
        indices: positions of these samples in the dataset they were taken from (set by
            :meth:`subset`); ``None`` for a dataset loaded whole.

    Attributes:
        images, labels, name, classes, transform, indices: as given.
        num_classes: ``len(classes)``.
        mean, std: per-channel statistics of ``images``, shape ``(C,)`` (computed on first use).

    Raises:
        ValueError: naming the argument, for images that are not a 4-d floating tensor in ``[0, 1]``,
            labels that are not a 1-d integer tensor of matching length within range, or no classes.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        name: str,
        classes: Sequence[str],
        transform: Transform | None = None,
        indices: Tensor | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a 4-d (N, C, H, W) floating tensor; got {_describe(images)}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(
                f"images must lie in [0, 1]; got values in [{images.min().item()}, {images.max().item()}]"
            )
        if not classes:
            raise ValueError(f"classes must name at least one class; got {classes!r}")
        if (
            not isinstance(labels, Tensor)
            or labels.shape != (len(images),)
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            raise ValueError(f"labels must be a ({len(images)},) integer tensor; got {_describe(labels)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes; "
                f"got values in [{labels.min().item()}, {labels.max().item()}]"
            )
        self.images = images.float()
        self.labels = labels.long()
        self.name = name
        self.classes = list(classes)
        self.transform = transform
        self.indices = indices

    @classmethod
    def from_uint8(cls, images: np.ndarray, labels: np.ndarray, *, name: str, classes: Sequence[str]) -> ImageDataset:
        """Build a dataset from uint8 images ``(N, C, H, W)`` (scaled by 1/255) and integer labels."""
        if images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array; got dtype {images.dtype}")
        scaled = torch.from_numpy(images).float().div_(255)
        return cls(scaled, torch.from_numpy(np.asarray(labels, dtype=np.int64)), name=name, classes=classes)

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.images.shape[1:]
        return channels, height, width

    @cached_property
    def mean(self) -> Tensor:
        """Per-channel mean of the images, shape ``(C,)``."""
        return self.images.mean(dim=(0, 2, 3))

    @cached_property
    def std(self) -> Tensor:
        """Per-channel standard deviation of the images, shape ``(C,)``."""
        return self.images.std(dim=(0, 2, 3))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Index) -> tuple[Tensor, Tensor]:
        """The image(s) and label(s) at ``index``; ``transform`` is applied to the image(s)."""
        if isinstance(index, (list, tuple, range)):
            index = torch.as_tensor(index, dtype=torch.long)
        images = self.images[index]
        if self.transform is not None:
            images = self.transform(images)
        return images, self.labels[index]

    def subset(self, indices: Sequence[int] | Tensor) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (copied), keeping name, classes and transform.

        Its ``indices`` attribute records the positions in this dataset's source (composing subsets).
        """
        positions = torch.as_tensor(indices, dtype=torch.long)
        if positions.ndim != 1:
            raise ValueError(f"indices must be 1-d; got shape {tuple(positions.shape)}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= len(self)):
            raise ValueError(
                f"indices must lie in [0, {len(self) - 1}]; "
                f"got values in [{positions.min().item()}, {positions.max().item()}]"
            )
        source = positions if self.indices is None else self.indices[positions]
        return ImageDataset(
            self.images[positions],
            self.labels[positions],
            name=self.name,
            classes=self.classes,
            transform=self.transform,
            indices=source,
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
