"""``load_dataset``: one entry point for every dataset robustlr knows."""

from __future__ import annotations

from typing import Any

from .catalog import DATASET_NAMES, SPLITS, STORED_DATASETS
from ..checks import check_choice
from .digits import load_digits
from .discovery import DatasetNotFoundError, PathLike, download_dir, find_split_files
from .download import download_dataset
from .image_dataset import ImageDataset
from .synthetic import make_synthetic

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    split: str,
    root: PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` as an :class:`ImageDataset` with images in ``[0, 1]``.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` (read from files),
            ``"digits"`` (scikit-learn's 8x8 digits) or ``"synthetic"`` (seeded, generated).
        split: ``"train"`` or ``"test"``.
        root: a directory holding the files (or a ``<name>`` subdirectory of it): the only place looked in
            when given; without it the default places are searched (:mod:`robustlr.data.discovery`).
        download: if the files are not found, download and verify them into ``<root>/<name>``
            (else ``$ROBUSTLR_DATA/<name>``, else ``~/.cache/robustlr/<name>``).  ``root`` and
            ``download`` are unused by digits and synthetic, which need no files.
        **options: keyword arguments of :func:`robustlr.data.make_synthetic` (``n``, ``shape``,
            ``num_classes``, ``seed``, ``noise``); only the synthetic dataset takes any.

    Raises:
        ValueError: for an unknown ``name`` or ``split`` (listing the allowed values), options given
            to a dataset other than synthetic, or corrupted files (naming the file).
        NotADirectoryError: if ``root`` exists and is not a directory (before anything is downloaded).
        DataRootError: if ``root`` is given, does not hold the split (naming it and the files it lacks) and
            ``download`` is false; a :class:`DatasetNotFoundError`.
        DatasetNotFoundError: if the files are missing and ``download`` is false.
        robustlr.data.DownloadError: if ``download`` is true and the download fails.
    """
    check_choice("name", name, DATASET_NAMES)
    check_choice("split", split, SPLITS)
    if name == "synthetic":
        return make_synthetic(split, **options)
    if options:
        raise ValueError(f"options {sorted(options)} are only accepted by name='synthetic'; got name={name!r}")
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
