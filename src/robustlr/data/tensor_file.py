"""Tensor files: a dataset you already hold as arrays, in one ``.npz`` (``numpy.savez``) or ``.pt``
(``torch.save`` of a dict of tensors) file.

The file maps names to arrays, one (images, labels) pair per split:

``train_images``, ``train_labels``, ``test_images``, ``test_labels``  (either split may be absent)
``classes``  (optional): the class names, one string per class (a 1-d string array in ``.npz``, a list in ``.pt``)

Images are 4-d: uint8 values 0..255 (kept as uint8, image = value/255), or floating values in ``[0, 1]`` (finite;
stored as float32), in ``(N, C, H, W)`` order. A uint8 array whose last axis has 1 or 3 entries and whose second
axis has neither is taken as ``(N, H, W, C)`` (the order of PIL, numpy and TensorFlow) and transposed to
``(N, C, H, W)``; a floating array must already be ``(N, C, H, W)``. Labels are 1-d integers >= 0, one per image.
Without ``classes`` the classes are named ``class_0 … class_{K-1}``, ``K`` = 1 + the largest label of all
splits in the file (so both splits have the same classes).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import check_choice
from ..files import read_torch
from .catalog import SPLITS
from .discovery import ROOT_OPTION
from .image_dataset import ImageDataset

__all__ = ["TENSOR_FILE_SUFFIXES", "read_tensor_file"]

TENSOR_FILE_SUFFIXES = (".npz", ".pt")


def _read(path: Path) -> dict[str, Any]:
    """The file's arrays by name (numpy arrays, or tensors and a class list for ``.pt``)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    content = read_torch(path, "tensor file")
    if not isinstance(content, dict) or not all(isinstance(key, str) for key in content):
        raise ValueError(f"{path}: a .pt tensor file must hold a dict of tensors by name (torch.save({{'train_images':"
                         f" ..., 'train_labels': ...}})); got {type(content).__name__}")
    return content


def _array(path: Path, name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()  # read_torch maps to the CPU
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{path}: {name} must be an array or tensor; got {type(value).__name__}")


def _images(path: Path, name: str, array: np.ndarray) -> torch.Tensor:
    """``array`` checked and put in ``(N, C, H, W)`` order (uint8 kept, floats as float32)."""
    if array.ndim != 4:
        raise ValueError(f"{path}: {name} must be 4-d, (N, C, H, W) (or (N, H, W, C) for uint8); got shape "
                         f"{array.shape}")
    if array.dtype == np.uint8:
        if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
            array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return torch.from_numpy(np.ascontiguousarray(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: {name} must be uint8 (0..255) or floating (in [0, 1]); got dtype {array.dtype}")
    images = torch.from_numpy(array.astype(np.float32, copy=False))
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):  # NaN fails both comparisons
        raise ValueError(f"{path}: {name} must hold finite values in [0, 1] (floating images); got values in "
                         f"[{images.min().item()}, {images.max().item()}]")
    return images


def _labels(path: Path, name: str, array: np.ndarray, n: int | None) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (n is not None and len(array) != n):
        wanted = "" if n is None else f" of length {n} (one per image)"
        raise ValueError(f"{path}: {name} must be a 1-d integer array{wanted}; got dtype {array.dtype}, shape "
                         f"{array.shape}")
    if len(array) and array.min() < 0:
        raise ValueError(f"{path}: {name} must be integers >= 0; got a minimum of {array.min()}")
    return array.astype(np.int64)


def _classes(path: Path, content: dict[str, Any]) -> list[str]:
    if "classes" in content:
        names = content["classes"]
        names = names.tolist() if isinstance(names, np.ndarray) else names
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) for c in names):
            raise ValueError(f"{path}: classes must be a non-empty list of strings (the class names); got {names!r}")
        return list(names)
    largest = [int(_labels(path, key, _array(path, key, value), None).max(initial=-1))
               for key, value in content.items() if key.endswith("_labels")]
    return [f"class_{label}" for label in range(max(largest, default=0) + 1)]


def read_tensor_file(path: str | os.PathLike[str], split: str, name: str = "file") -> ImageDataset:
    """Split ``split`` of the tensor file ``path`` (format in the module docstring) as an :class:`ImageDataset`.

    Raises:
        ValueError: naming the file: a path that is not an existing ``.npz``/``.pt`` file, an unreadable file,
            a file without the split's two arrays (listing those it holds), images or labels of a wrong shape,
            dtype or range, labels beyond the named classes.
    """
    check_choice("split", split, SPLITS)
    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)):
        raise ValueError(f"{ROOT_OPTION} must name a tensor file (.npz or .pt) for name='file'; got {path!r}")
    file = Path(path).expanduser()
    if file.suffix not in TENSOR_FILE_SUFFIXES or not file.is_file():
        problem = ("does not exist" if not file.exists() else "is not a file" if not file.is_file()
                   else "has neither suffix")
        raise ValueError(f"{ROOT_OPTION} must be a .npz or .pt file of arrays; {file} {problem}")
    content = _read(file)
    keys = (f"{split}_images", f"{split}_labels")
    missing = [key for key in keys if key not in content]
    if missing:
        raise ValueError(f"{file}: no {split} split: {' and '.join(missing)} missing (it holds "
                         f"{', '.join(sorted(content)) or 'nothing'}); a tensor file holds {keys[0]} and {keys[1]}")
    images = _images(file, keys[0], _array(file, keys[0], content[keys[0]]))
    labels = _labels(file, keys[1], _array(file, keys[1], content[keys[1]]), len(images))
    classes = _classes(file, content)
    if len(labels) and labels.max() >= len(classes):
        raise ValueError(f"{file}: {keys[1]} must lie in [0, {len(classes) - 1}] for the {len(classes)} classes; got "
                         f"a maximum of {labels.max()}")
    return ImageDataset(images, torch.from_numpy(labels), name=name, classes=classes)
