"""CIFAR-style data augmentation written in torch: random crop with zero padding and random horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_int

__all__ = ["RandomCropFlip"]


class RandomCropFlip:
    """Pad by ``padding`` zeros on each side, crop back to the input size at a random offset, and
    flip left-right with probability 1/2: the standard CIFAR augmentation (crop 32, padding 4).

    Works on one image ``(C, H, W)`` or a batch ``(B, C, H, W)``; in a batch every image gets its own
    offset and flip, drawn in one vectorised step.  The draws come from a private ``torch.Generator``
    seeded with ``seed``, so two instances with the same seed produce the same sequence of
    augmentations and the global RNG is never touched.

    Args:
        padding: zero padding on each side, >= 0 (0 disables the crop).
        seed: non-negative seed of the generator.
        flip: whether to apply the random horizontal flip.

    Raises:
        ValueError: for a negative ``padding`` or ``seed``, or input that is not 3-d or 4-d.
    """

    def __init__(self, padding: int = 4, seed: int = 0, flip: bool = True) -> None:
        self.padding = check_int("padding", padding, 0)
        self.seed = check_int("seed", seed, 0)
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: Tensor) -> Tensor:
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be (C, H, W) or (B, C, H, W); got shape {tuple(images.shape)}")
        batch = images if images.ndim == 4 else images.unsqueeze(0)
        count, _, height, width = batch.shape
        rows = torch.arange(height).expand(count, height)
        cols = torch.arange(width).expand(count, width)
        if self.padding:
            offsets = torch.randint(0, 2 * self.padding + 1, (2, count, 1), generator=self.generator)
            rows, cols = rows + offsets[0], cols + offsets[1]
        if self.flip:
            flipped = torch.rand(count, generator=self.generator) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(-1), cols)
        device = batch.device
        channels_last = F.pad(batch, [self.padding] * 4).permute(0, 2, 3, 1)
        picked = channels_last[
            torch.arange(count, device=device)[:, None, None],
            rows.to(device)[:, :, None],
            cols.to(device)[:, None, :],
        ]  # (B, H, W, C)
        out = picked.permute(0, 3, 1, 2).contiguous()
        return out if images.ndim == 4 else out[0]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, seed={self.seed}, flip={self.flip})"
