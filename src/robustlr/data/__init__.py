"""Datasets for robustlr: readers, discovery, verified downloads, provisioning, seeded loaders and augmentation.

Typical use::

    from robustlr.data import load_dataset, make_loader, train_val_split

    train = load_dataset("fashion-mnist", "train")          # ImageDataset, images in [0, 1] (stored as uint8)
    folder = load_dataset("folder", "train", root="my-images", image_size=224)   # FolderDataset, decoded lazily
    train, val = train_val_split(train, val_fraction=0.1, seed=0)
    for images, labels in make_loader(train, batch_size=128, shuffle=True, seed=0):
        ...

    provision("fashion-mnist")   # found, else apt-get (Debian, root), else downloaded; else a clear error
"""

from .apt import PackageInstallError
from .augment import RandomCropFlip
from .catalog import DATASET_NAMES, REMOTE_FILES, SPLITS, STORED_DATASETS, USER_DATASETS, RemoteFile, StoredDataset
from .cifar import RestrictedUnpickler, load_pickle, read_cifar_dataset
from .datasets import load_dataset
from .digits import load_digits
from .discovery import (
    DATA_ENV_VAR,
    SYSTEM_DATA_DIR,
    DataRootError,
    DatasetNotFoundError,
    download_dir,
    find_split_files,
    root_dir,
    search_dirs,
)
from .download import DownloadError, download_dataset, download_file, extract_tar, file_matches
from .folder import IMAGE_SUFFIXES, FolderDataset, default_workers
from .idx import parse_idx, read_idx, read_idx_dataset
from .image_dataset import ImageDataset
from .loaders import BatchLoader, BatchRequest, Fetched, SeededBatches, make_loader, train_val_split
from .provision import provision
from .synthetic import make_synthetic
from .tensor_file import read_tensor_file

__all__ = [
    "BatchLoader",
    "BatchRequest",
    "DATASET_NAMES",
    "DATA_ENV_VAR",
    "REMOTE_FILES",
    "SPLITS",
    "STORED_DATASETS",
    "SYSTEM_DATA_DIR",
    "DataRootError",
    "DatasetNotFoundError",
    "DownloadError",
    "Fetched",
    "FolderDataset",
    "IMAGE_SUFFIXES",
    "ImageDataset",
    "RandomCropFlip",
    "RemoteFile",
    "RestrictedUnpickler",
    "SeededBatches",
    "StoredDataset",
    "USER_DATASETS",
    "default_workers",
    "download_dataset",
    "download_dir",
    "download_file",
    "extract_tar",
    "file_matches",
    "find_split_files",
    "load_dataset",
    "load_digits",
    "load_pickle",
    "make_loader",
    "make_synthetic",
    "PackageInstallError",
    "parse_idx",
    "provision",
    "read_cifar_dataset",
    "read_idx",
    "read_idx_dataset",
    "read_tensor_file",
    "root_dir",
    "search_dirs",
    "train_val_split",
]
