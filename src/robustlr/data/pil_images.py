"""Reading one image file with Pillow into RGB, and the evaluation and training transforms of image folders.

Every image becomes 3-channel RGB, 8 bits per channel, by its mode:

* ``RGB``: as stored; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette (``P``) images without transparency are
  converted to RGB by Pillow;
* grayscale ``L`` and bilevel ``1``: the gray value in all three channels; 16-bit grayscale (``I;16``,
  ``I;16L``, ``I;16B``): its top 8 bits (``v >> 8``), in all three channels;
* with transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, ``P`` with a transparent colour): composited
  over black, each channel ``c·α/255`` (Pillow's ``alpha_composite``): a transparent pixel is black whatever
  colour it stores;
* 32-bit integer (``I``) and floating (``F``) images have no agreed range of values: refused, naming the file.

Transforms (bilinear resampling, antialiased when shrinking, as Pillow resizes):

* evaluation (:func:`evaluation_view`): resize the shorter side to ``round(N·256/224)``, the longer side in
  proportion (truncated, as torchvision's ``Resize``), then centre-crop ``N × N``;
* training (:func:`training_view`): the random-resized crop of :func:`robustlr.data.augment.resized_crop_box`
  resized to ``N × N``, then the random flip.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .augment import resized_crop_box

__all__ = ["EVAL_RESIZE", "evaluation_view", "image_header", "read_rgb", "training_view"]

EVAL_RESIZE = 256 / 224
"""Shorter side of the evaluation resize per unit of the crop (the ImageNet convention: 256 for a 224 crop)."""

_GRAY16 = ("I;16", "I;16L", "I;16B")
_REFUSED = ("I", "F", "I;16N", "I;32", "I;32L", "I;32B")

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for a file that is not an image, a truncated or corrupt one, or a decompression bomb."""


def _refused(path: str | os.PathLike[str], mode: str) -> ValueError:
    """The error for an image whose mode is refused (see the module docstring)."""
    return ValueError(f"{os.fspath(path)}: image mode {mode!r} (32-bit integer or floating point) has no agreed "
                      "range of values; allowed: 8-bit images (RGB, grayscale, palette, with or without alpha, "
                      "CMYK, YCbCr) and 16-bit grayscale; convert it to an 8-bit PNG or JPEG")


def image_header(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of the image in ``path``, from its header (the pixels are not decoded).

    Raises:
        ValueError: naming the file, if Pillow cannot identify it as an image or its mode is refused.
    """
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
    except _PIL_ERRORS as error:
        raise ValueError(f"{os.fspath(path)}: not a readable image ({type(error).__name__}: {error})") from None
    if mode in _REFUSED:
        raise _refused(path, mode)
    return size


def read_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The image in ``path`` decoded to RGB as the module docstring says.

    Raises:
        ValueError: naming the file, if it cannot be decoded (not an image, truncated, corrupt) or its mode is
            refused.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            rgb = None if mode in _REFUSED else _to_rgb(image)
    except _PIL_ERRORS as error:
        raise ValueError(f"{os.fspath(path)}: not a readable image ({type(error).__name__}: {error})") from None
    if rgb is None:
        raise _refused(path, mode)
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image  # loaded: usable once its file is closed
    if image.mode in _GRAY16:
        gray = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def evaluation_view(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``round(size·256/224)`` and centre-crop ``size × size``."""
    short = round(size * EVAL_RESIZE)
    width, height = image.size
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    resized = image.resize(new, Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    return resized.crop((left, top, left + size, top + size))


def training_view(image: Image.Image, size: int, draws: np.ndarray) -> Image.Image:
    """The random-resized crop of ``image`` (from :data:`~robustlr.data.augment.CROP_DRAWS` draws) resized to
    ``size × size``, flipped left-right if the draws say so."""
    width, height = image.size
    box, flip = resized_crop_box(height, width, draws)
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view
