"""Image folders: the ImageFolder layout, read lazily with Pillow (:class:`FolderDataset`).

Layout (``root`` is ``--data-root``)::

    root/train/<class>/<any/depth>/*.jpg | .jpeg | .png | .bmp | .gif | .tif | .tiff | .webp | .ppm | .pgm | .pbm
    root/val/<class>/...     (the "test" split; root/test/<class>/... when there is no root/val)

Classes are the subdirectories of ``root/train`` sorted by name (label ``k`` is the ``k``-th); a test split may
hold a subset of them. A folder without ``train/`` (evaluation data only) takes its classes from its own test
split. Files are sorted by path within each class; files with other suffixes (``README``, ``.DS_Store``) are not
images and are skipped; hidden directories (``.name``) are skipped; an image lying directly in the split
directory, outside any class, is an error.

Nothing is decoded when the dataset is built: it holds the file paths (one bytes array, no Python object per
file, so loader workers share it without copying) and the labels. Each fetch opens and decodes its files
(:mod:`robustlr.data.pil_images`: every image becomes RGB). Without ``image_size`` all images must have one
size, checked from the file headers when the dataset is built; with it, images of any size are resized: the
evaluation view (shorter side ``round(N·256/224)``, centre crop ``N``) or, for augmented training batches, the
random-resized crop ``N`` with a flip, seeded per sample (:mod:`robustlr.data.seeding`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..checks import check_choice, check_int
from .augment import CROP_DRAWS
from .catalog import SPLITS
from .discovery import ROOT_OPTION
from .image_dataset import ImageDataset, _set_labels
from .pil_images import evaluation_view, image_header, read_rgb, training_view
from .seeding import AugmentSeed, uniforms

__all__ = ["IMAGE_SUFFIXES", "SPLIT_DIRECTORIES", "FolderDataset", "default_workers"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File suffixes read as images (compared in lower case)."""

SPLIT_DIRECTORIES = {"train": ("train",), "test": ("val", "test")}
"""The directories of each split under the root, in the order looked for."""

View = Callable[[Image.Image, int], Image.Image]
"""``(image, row) -> view``: what a fetch makes of the ``row``-th decoded image of the batch."""


def default_workers() -> int:
    """Loader processes that decode a folder by default: ``min(4, CPUs available to this process)``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def _split_directory(root: Path, split: str) -> Path:
    for name in SPLIT_DIRECTORIES[split]:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{name}/" for name in SPLIT_DIRECTORIES[split])
    raise ValueError(f"{ROOT_OPTION} {root} has no {wanted} directory for the {split} split; an image folder "
                     f"holds {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg (or test/)")


def _class_directories(directory: Path) -> list[str]:
    names = sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    loose = sorted(entry.name for entry in directory.iterdir()
                   if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise ValueError(f"{directory / loose[0]}: an image outside any class directory; every image must lie in "
                         f"{directory}/<class>/ (the directory's name is the class)")
    if not names:
        raise ValueError(f"{directory} has no class directories; allowed: {directory}/<class>/*.jpg, one directory "
                         "per class")
    return names


def _images_of(directory: Path) -> list[str]:
    """The image files under ``directory`` (any depth, hidden directories skipped), relative to its parent."""
    found = []
    for current, subdirectories, files in os.walk(directory, followlinks=True):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        found += [os.path.join(current, name) for name in sorted(files) if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise ValueError(f"class directory {directory} holds no image ({', '.join(IMAGE_SUFFIXES)}); remove it "
                         "or add its images")
    return [os.path.relpath(path, directory.parent) for path in found]


def _scan(root: Path, split: str) -> tuple[Path, list[str], list[str], list[int]]:
    """(split directory, classes, image paths relative to it, labels)."""
    directory = _split_directory(root, split)
    own = _class_directories(directory)
    classes = _class_directories(root / "train") if split != "train" and (root / "train").is_dir() else own
    unknown = sorted(set(own) - set(classes))
    if unknown:
        raise ValueError(f"{directory} has classes that {root / 'train'} lacks: {', '.join(unknown)}; the test "
                         "split's classes must be training classes (the labels are their positions in train/)")
    files, labels = [], []
    for name in own:
        found = _images_of(directory / name)
        files += found
        labels += [classes.index(name)] * len(found)
    return directory, classes, files, labels


def _common_size(directory: Path, files: Sequence[str]) -> tuple[int, int]:
    """(height, width) shared by every image (from the headers), else an error naming two that differ."""
    first = image_header(directory / files[0])
    for name in files[1:]:
        size = image_header(directory / name)
        if size != first:
            raise ValueError(
                f"images differ in size: {directory / files[0]} is {first[0]}x{first[1]}, {directory / name} is "
                f"{size[0]}x{size[1]} (width x height); give image_size=N (CLI: --image-size N) to resize every "
                "image (shorter side round(N·256/224), centre crop N), or make them one size"
            )
    return first[1], first[0]


class FolderDataset(ImageDataset):
    """The ``split`` of an image folder (layout in the module docstring), decoded image by image when fetched.

    An :class:`ImageDataset` whose images stay on disk: ``dataset[i]``, ``dataset[ids]`` and the loaders decode
    the files they fetch (float32 RGB images in ``[0, 1]``); :attr:`images` decodes every file (use loaders).

    Args:
        root: the folder's root directory.
        split: ``"train"`` (``root/train``) or ``"test"`` (``root/val``, else ``root/test``).
        image_size: ``N`` to resize every image to ``N × N`` (see the module docstring); ``None``: images keep
            their size, which must be the same for all.
        workers: loader processes that decode it by default (``None``: :func:`default_workers`; 0: the main
            process).
        name: the dataset's name.

    Attributes:
        root, split, image_size, workers, name, classes, labels, indices, transform: as for ``ImageDataset``.
        directory: the split's directory; files: the image paths relative to it (bytes, one row per image).

    Raises:
        ValueError: naming the directory or file: a root that is not a directory, a missing split directory,
            no class directories, an empty class, a test class the training split lacks, an image outside a
            class; without ``image_size``, an unreadable file or two images of different sizes (naming both).
            A corrupt file met when fetching is a ValueError naming it.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, *, image_size: int | None = None,
                 workers: int | None = None, name: str = "folder") -> None:
        check_choice("split", split, SPLITS)
        if image_size is not None:
            check_int("image_size", image_size, 1)
        base = Path(root).expanduser()
        if not base.is_dir():
            raise ValueError(f"{ROOT_OPTION} must be an image folder's directory; {base} "
                             f"{'is not a directory' if base.exists() else 'does not exist'}")
        directory, classes, files, labels = _scan(base, split)
        height, width = (image_size, image_size) if image_size is not None else _common_size(directory, files)
        _set_labels(self, torch.tensor(labels, dtype=torch.long), len(files), classes, name, None, None)
        self.root, self.split, self.directory = base, split, directory
        self.files = np.array([os.fsencode(path) for path in files])
        self.image_size = image_size
        self.workers = default_workers() if workers is None else check_int("workers", workers, 0)
        self.levels = 255
        self._shape = (3, height, width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)``: every image is RGB, of the common size or ``image_size``."""
        return self._shape

    @property
    def images(self) -> Tensor:
        """Every image decoded (evaluation view) into one float32 tensor: the whole dataset in memory."""
        return self._take(slice(None))

    def _statistics(self) -> tuple[Tensor, Tensor]:
        images = self.images
        return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))

    def path(self, position: int) -> Path:
        """The file of the image at ``position``."""
        return self.directory / os.fsdecode(self.files[position])

    def _stored(self, index: int | slice | Tensor) -> Tensor:
        positions = torch.arange(len(self))[index]
        if positions.ndim == 0:
            return self._decode(positions[None], self._evaluation_view)[0]
        return self._decode(positions, self._evaluation_view)

    def _evaluation_view(self, image: Image.Image, row: int) -> Image.Image:
        return image if self.image_size is None else evaluation_view(image, self.image_size)

    def _decode(self, positions: Tensor, view: View) -> Tensor:
        """The images at ``positions``, each decoded, passed through ``view`` and checked to have the dataset's
        size, as a uint8 batch ``(B, 3, H, W)``."""
        batch = np.empty((len(positions), *self._shape), dtype=np.uint8)  # numpy: a copy per image without threads
        for row, position in enumerate(positions.tolist()):
            image = view(read_rgb(self.path(position)), row)
            if (image.height, image.width) != self._shape[1:]:
                raise ValueError(f"{self.path(position)}: {image.width}x{image.height} image, but the dataset's images "
                                 f"are {self._shape[2]}x{self._shape[1]} (the file changed since the dataset was "
                                 "built?); give image_size=N (CLI: --image-size N) to resize every image")
            batch[row] = np.asarray(image).transpose(2, 0, 1)
        return torch.from_numpy(batch)

    def fetch(self, positions: Tensor, augment: AugmentSeed | None) -> tuple[Tensor, Tensor, int | None]:
        """The batch at ``positions``, as :meth:`ImageDataset.fetch` returns it (uint8 images of 255 levels
        without ``transform``); with ``augment`` (the epoch's seed) and ``image_size``, each image is its seeded
        random-resized crop and flip (:func:`~robustlr.data.pil_images.training_view`), else the evaluation view
        augmented as :meth:`ImageDataset.fetch` does (the seeded crop with padding 4 and flip)."""
        if augment is None or self.image_size is None:
            return super().fetch(positions, augment)
        draws = uniforms(augment, self.keys(positions), CROP_DRAWS)
        size = self.image_size
        images = self._decode(positions, lambda image, row: training_view(image, size, draws[row]))
        if self.transform is not None:
            return self.transform(self._scaled(images)), self.labels[positions], None
        return images, self.labels[positions], self.levels

    def subset(self, indices: Sequence[int] | Tensor) -> FolderDataset:
        """A new folder dataset of the samples at ``indices`` (no file is read again)."""
        positions = self._positions(indices)
        part = object.__new__(FolderDataset)
        part.__dict__.update({key: value for key, value in self.__dict__.items() if key not in ("mean", "std")})
        part.files, part.labels = self.files[positions.numpy()], self.labels[positions]
        part.indices = self._source(positions)
        return part
