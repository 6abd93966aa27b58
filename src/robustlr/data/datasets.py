"""``load_dataset``: one entry point for every dataset robustlr knows, and for your own (an image folder or a
tensor file at the root you name)."""

from __future__ import annotations

from typing import Any

from .catalog import DATASET_NAMES, SPLITS, STORED_DATASETS, USER_DATASETS
from ..checks import check_choice
from .digits import load_digits
from .discovery import DatasetNotFoundError, PathLike, download_dir, find_split_files
from .download import download_dataset
from .folder import FolderDataset
from .image_dataset import ImageDataset
from .synthetic import make_synthetic
from .tensor_file import read_tensor_file

__all__ = ["load_dataset"]

_OPTIONS = {"synthetic": ("n", "shape", "num_classes", "seed", "noise"), "folder": ("image_size", "workers")}
"""The datasets that take options (``**options`` of :func:`load_dataset`), and which."""


def load_dataset(
    name: str,
    split: str,
    root: PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` as an :class:`ImageDataset` with images in ``[0, 1]``.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` (read from files, stored as
            uint8), ``"digits"`` (scikit-learn's 8x8 digits), ``"synthetic"`` (seeded, generated), ``"folder"``
            (an image folder at ``root``, decoded lazily: a :class:`~robustlr.data.FolderDataset`) or ``"file"``
            (a tensor file at ``root``: :func:`~robustlr.data.tensor_file.read_tensor_file`).
        split: ``"train"`` or ``"test"``.
        root: a directory holding the files (or a ``<name>`` subdirectory of it): the only place looked in
            when given; without it the default places are searched (:mod:`robustlr.data.discovery`).  For
            ``"folder"`` the folder's root, for ``"file"`` the file: required.
        download: if the files are not found, download and verify them into ``<root>/<name>``
            (else ``$ROBUSTLR_DATA/<name>``, else ``~/.cache/robustlr/<name>``).  Only for the datasets of
            :data:`~robustlr.data.STORED_DATASETS`; ``root`` and ``download`` are unused by digits and synthetic.
        **options: keyword arguments of :func:`robustlr.data.make_synthetic` (``n``, ``shape``,
            ``num_classes``, ``seed``, ``noise``) for synthetic, of :class:`~robustlr.data.FolderDataset`
            (``image_size``, ``workers``) for folder; no other dataset takes any.

    Raises:
        ValueError: for an unknown ``name`` or ``split`` (listing the allowed values), options given
            to a dataset that does not take them, ``download`` or no ``root`` for folder and file, or
            corrupted files (naming the file).
        NotADirectoryError: if ``root`` exists and is not a directory (before anything is downloaded).
        DataRootError: if ``root`` is given, does not hold the split (naming it and the files it lacks) and
            ``download`` is false; a :class:`DatasetNotFoundError`.
        DatasetNotFoundError: if the files are missing and ``download`` is false.
        robustlr.data.DownloadError: if ``download`` is true and the download fails.
    """
    check_choice("name", name, DATASET_NAMES)
    check_choice("split", split, SPLITS)
    unknown = sorted(set(options) - set(_OPTIONS.get(name, ())))
    if unknown:
        takes = " and ".join(f"name={which!r} ({', '.join(names)})" for which, names in _OPTIONS.items())
        raise ValueError(f"options {unknown} are not taken by name={name!r}: options are only accepted by {takes}")
    if name in USER_DATASETS:
        if root is None or download:
            raise ValueError(f"name={name!r} reads your own data at root (CLI: --data-root), which must be given, and "
                             f"cannot be downloaded; got root={root!r}, download={download!r}")
        return FolderDataset(root, split, **options) if name == "folder" else read_tensor_file(root, split)
    if name == "synthetic":
        return make_synthetic(split, **options)
    if name == "digits":
        return load_digits(split)
    spec = STORED_DATASETS[name]
    try:
        files = find_split_files(spec, split, root)
    except DatasetNotFoundError:
        if not download:
            raise
        download_dataset(name, download_dir(name, root))
        files = find_split_files(spec, split, root)
    images, labels = spec.reader(files)
    return ImageDataset.from_uint8(images, labels, name=name, classes=spec.classes)
