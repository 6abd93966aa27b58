"""Seeded synthetic images whose class is learnable: each class has a random prototype image and
every sample is its class prototype plus Gaussian noise, clipped to ``[0, 1]``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .catalog import SPLITS
from ..checks import check_choice, check_int, check_number
from .image_dataset import ImageDataset

__all__ = ["make_synthetic"]


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent generator per (seed, stream): 0 for the prototypes, 1 + split index for samples."""
    derived = np.random.SeedSequence((seed, stream)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(derived))


def make_synthetic(
    split: str = "train",
    *,
    n: int = 1000,
    shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.25,
) -> ImageDataset:
    """A seeded synthetic classification dataset named ``"synthetic"``.

    Both splits share the class prototypes (drawn from ``seed``) and draw their samples from
    independent streams, so a model trained on ``"train"`` generalises to ``"test"``.  Labels are
    balanced (``n // num_classes`` or one more per class) and shuffled.

    Args:
        split: ``"train"`` or ``"test"``.
        n: number of images, >= 1.
        shape: ``(C, H, W)`` of each image, all >= 1.
        num_classes: number of classes, >= 2.
        seed: non-negative seed; the same arguments always give the same dataset.
        noise: standard deviation of the per-pixel Gaussian noise, finite and >= 0.

    Raises:
        ValueError: naming the argument, for any value outside the ranges above.
    """
    check_choice("split", split, SPLITS)
    check_int("n", n, 1)
    check_int("num_classes", num_classes, 2)
    check_int("seed", seed, 0)
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or any(
        isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in shape
    ):
        raise ValueError(f"shape must be (C, H, W) with three integers >= 1; got {shape!r}")
    check_number("noise", noise)
    prototypes = torch.rand((num_classes, *shape), generator=_generator(seed, 0))
    samples = _generator(seed, 1 + SPLITS.index(split))
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=samples)]
    images = prototypes[labels] + noise * torch.randn((n, *shape), generator=samples)
    return ImageDataset(
        images.clamp_(0, 1),
        labels,
        name="synthetic",
        classes=[f"class_{label}" for label in range(num_classes)],
    )
