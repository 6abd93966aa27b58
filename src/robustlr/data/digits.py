"""scikit-learn's 8x8 handwritten digits as an :class:`ImageDataset` (needs the optional scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch

from .catalog import SPLITS
from ..checks import check_choice
from .image_dataset import ImageDataset

__all__ = ["load_digits"]

_SPLIT_SEED = 0


def load_digits(split: str) -> ImageDataset:
    """The 1797 8x8 digit images, scaled from ``[0, 16]`` to ``[0, 1]``, shape ``(N, 1, 8, 8)`` (stored as
    uint8 values 0..16, ``levels`` 16).

    The data has no official split: a fixed permutation (seed 0) puts one fifth of the images (359)
    in ``"test"`` and the rest (1438) in ``"train"``, the same on every call.

    Raises:
        ValueError: for a ``split`` other than ``"train"`` or ``"test"``.
        ImportError: if scikit-learn is not installed, saying how to install it.
    """
    check_choice("split", split, SPLITS)
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn (or robustlr[digits])"
        ) from error
    bunch = sklearn_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # integers 0..16, stored as floats
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = len(labels) // 5
    chosen = order[:n_test] if split == "test" else order[n_test:]
    chosen = chosen.sort().values
    return ImageDataset(images[chosen], labels[chosen], name="digits", classes=[str(digit) for digit in range(10)],
                        levels=16)
