"""Data augmentation: the CIFAR random crop with zero padding and flip (in torch, on batches), and the
parameters of the ImageNet random-resized crop (applied by :mod:`robustlr.data.pil_images`).

Both take their randomness as ``U[0, 1)`` draws: from a private generator (:class:`RandomCropFlip` called on a
batch), or per sample from :func:`robustlr.data.seeding.uniforms` (the loaders: a sample's augmentation is then a
function of the epoch's seed and the sample's key, whatever batch or process fetches it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_int
from .seeding import AugmentSeed, uniforms

__all__ = ["CROP_DRAWS", "CROP_RATIO", "CROP_SCALE", "RandomCropFlip", "resized_crop_box"]


class RandomCropFlip:
    """Pad by ``padding`` zeros on each side, crop back to the input size at a random offset, and
    flip left-right with probability 1/2: the standard CIFAR augmentation (crop 32, padding 4).

    Works on one image ``(C, H, W)`` or a batch ``(B, C, H, W)``; in a batch every image gets its own
    offset and flip, drawn in one vectorised step.  Called on images, the draws come from a private
    ``torch.Generator`` seeded with ``seed``, so two instances with the same seed produce the same sequence of
    augmentations and the global RNG is never touched; :meth:`keyed` draws them per sample instead.

    Three draws ``u`` per image: row offset ``⌊u₀ (2p + 1)⌋`` and column offset ``⌊u₁ (2p + 1)⌋`` into the
    padded image, a flip when ``u₂ < 1/2``.

    Args:
        padding: zero padding on each side, >= 0 (0 disables the crop).
        seed: non-negative seed of the generator.
        flip: whether to apply the random horizontal flip.

    Raises:
        ValueError: for a negative ``padding`` or ``seed``, or input that is not 3-d or 4-d.
    """

    DRAWS = 3

    def __init__(self, padding: int = 4, seed: int = 0, flip: bool = True) -> None:
        self.padding = check_int("padding", padding, 0)
        self.seed = check_int("seed", seed, 0)
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: Tensor) -> Tensor:
        batch = _as_batch(images)
        out = self.apply(batch, torch.rand((len(batch), self.DRAWS), generator=self.generator, dtype=torch.float64))
        return out if images.ndim == 4 else out[0]

    def keyed(self, images: Tensor, seed: AugmentSeed, keys: Sequence[int]) -> Tensor:
        """Augment the batch ``images`` with draws :func:`~robustlr.data.seeding.uniforms` ``(seed, keys[n])``
        for image ``n`` (``self.seed`` and the generator are not used)."""
        batch = _as_batch(images)
        if len(keys) != len(batch):
            raise ValueError(f"keys must hold one key per image; got {len(keys)} keys for {len(batch)} images")
        return self.apply(batch, torch.from_numpy(uniforms(seed, keys, self.DRAWS)))

    def apply(self, batch: Tensor, draws: Tensor) -> Tensor:
        """The batch ``(B, C, H, W)`` cropped and flipped as the draws ``(B, 3)`` in ``[0, 1)`` say."""
        count, _, height, width = batch.shape
        rows = torch.arange(height).expand(count, height)
        cols = torch.arange(width).expand(count, width)
        if self.padding:
            offsets = (draws[:, :2] * (2 * self.padding + 1)).long().T[:, :, None]
            rows, cols = rows + offsets[0], cols + offsets[1]
        if self.flip:
            cols = torch.where((draws[:, 2] < 0.5)[:, None], cols.flip(-1), cols)
        device = batch.device
        channels_last = F.pad(batch, [self.padding] * 4).permute(0, 2, 3, 1)
        picked = channels_last[
            torch.arange(count, device=device)[:, None, None],
            rows.to(device)[:, :, None],
            cols.to(device)[:, None, :],
        ]  # (B, H, W, C)
        return picked.permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, seed={self.seed}, flip={self.flip})"


def _as_batch(images: Tensor) -> Tensor:
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (C, H, W) or (B, C, H, W); got shape {tuple(images.shape)}")
    return images if images.ndim == 4 else images.unsqueeze(0)


CROP_SCALE = (0.08, 1.0)
"""Area fraction range of the random-resized crop (Szegedy et al., CVPR 2015, as torchvision's default)."""

CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect-ratio (width / height) range of the random-resized crop, sampled log-uniformly."""

_ATTEMPTS = 10

CROP_DRAWS = 4 * _ATTEMPTS + 1
"""Draws per image of the random-resized crop and flip: four per attempt (area, log-ratio, top, left), one flip."""


def resized_crop_box(height: int, width: int, draws: np.ndarray) -> tuple[tuple[int, int, int, int], bool]:
    """The random-resized crop of an image of ``height × width``: its box ``(left, top, right, bottom)`` and
    whether to flip it, from :data:`CROP_DRAWS` draws in ``[0, 1)``.

    torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts draw an area ``A·U(0.08, 1)`` (``A = H·W``)
    and an aspect ratio ``r = exp(U(ln 3/4, ln 4/3))``, giving ``w = round(√(a r))``, ``h = round(√(a / r))``; the
    first crop that fits is placed at a uniform offset.  If none fits, the whole image is cropped to the nearest
    allowed ratio, centred.  The image is flipped left-right when the last draw is below 1/2.
    """
    area = height * width
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for attempt in range(_ATTEMPTS):
        u_area, u_ratio, u_top, u_left = draws[4 * attempt : 4 * attempt + 4]
        target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u_area)
        ratio = math.exp(low + (high - low) * u_ratio)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(u_top * (height - h + 1)), int(u_left * (width - w + 1))
            return (left, top, left + w, top + h), bool(draws[-1] < 0.5)
    if width / height < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif width / height > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h), bool(draws[-1] < 0.5)
