"""The datasets robustlr knows: their names, classes, on-disk layouts and download sources.

:data:`REMOTE_FILES` is the download table.  Every entry pins the MD5 that torchvision publishes
and the SHA-256 published for the same file (torchvision's prototype datasets, TFDS and Keras pin
these); :func:`robustlr.data.download.download_file` requires every known hash to match.  The
table is a plain module-level dict so that tests (or a mirror) can point entries elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .cifar import read_cifar_dataset
from .idx import read_idx_dataset

__all__ = [
    "DATASET_NAMES",
    "GENERATED_DATASETS",
    "REMOTE_FILES",
    "SPLITS",
    "STORED_DATASETS",
    "RemoteFile",
    "StoredDataset",
    "USER_DATASETS",
]

SPLITS = ("train", "test")

Reader = Callable[[Sequence[Path]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class StoredDataset:
    """A dataset read from files on disk.

    Attributes:
        name: the name given to ``load_dataset`` and the directory name searched for.
        classes: class names, indexed by label.
        split_files: per split, the files to read, relative to the dataset directory.
        suffixes: the spellings tried for each file name, in order (``.gz`` then plain for IDX).
        reader: turns the split's files into uint8 images ``(N, C, H, W)`` and int64 labels.
        debian_package: the Debian package that installs the files, if there is one.
    """

    name: str
    classes: tuple[str, ...]
    split_files: Mapping[str, tuple[str, ...]]
    suffixes: tuple[str, ...]
    reader: Reader
    debian_package: str | None = None


@dataclass(frozen=True)
class RemoteFile:
    """One file to download and the checksums it must match (at least one must be known).

    Attributes:
        url: where to fetch it; the file keeps the URL's last path component as its name.
        md5: expected MD5 hex digest, or ``None`` if unknown.
        sha256: expected SHA-256 hex digest, or ``None`` if unknown.
        extract: the file is a tar archive to unpack (safely) into the dataset directory.
    """

    url: str
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False

    @property
    def filename(self) -> str:
        """The name the downloaded file is stored under."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


_IDX_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR100_CLASSES = tuple(
    """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange
    orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit
    raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
    streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
    turtle wardrobe whale willow_tree wolf woman worm
    """.split()
)  # the fine labels, alphabetical

STORED_DATASETS: dict[str, StoredDataset] = {
    "fashion-mnist": StoredDataset(
        name="fashion-mnist",
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        split_files=_IDX_SPLIT_FILES,
        suffixes=(".gz", ""),
        reader=read_idx_dataset,
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": StoredDataset(
        name="mnist",
        classes=tuple(str(digit) for digit in range(10)),
        split_files=_IDX_SPLIT_FILES,
        suffixes=(".gz", ""),
        reader=read_idx_dataset,
    ),
    "cifar10": StoredDataset(
        name="cifar10",
        classes=_CIFAR10_CLASSES,
        split_files={
            "train": tuple(f"cifar-10-batches-py/data_batch_{index}" for index in range(1, 6)),
            "test": ("cifar-10-batches-py/test_batch",),
        },
        suffixes=("",),
        reader=partial(read_cifar_dataset, label_key="labels"),
    ),
    "cifar100": StoredDataset(
        name="cifar100",
        classes=_CIFAR100_CLASSES,
        split_files={"train": ("cifar-100-python/train",), "test": ("cifar-100-python/test",)},
        suffixes=("",),
        reader=partial(read_cifar_dataset, label_key="fine_labels"),
    ),
}

GENERATED_DATASETS = ("digits", "synthetic")
"""Datasets built in memory: scikit-learn's 8x8 digits and seeded synthetic images."""

USER_DATASETS = ("folder", "file")
"""Your own data, at the ``root`` you name: an image folder (:mod:`robustlr.data.folder`) or a tensor file
(:mod:`robustlr.data.tensor_file`)."""

DATASET_NAMES = (*STORED_DATASETS, *GENERATED_DATASETS, *USER_DATASETS)


def _idx_remote_files(base_url: str, checksums: Mapping[str, tuple[str, str]]) -> tuple[RemoteFile, ...]:
    """The four gzipped IDX files under ``base_url``; ``checksums`` maps file stem to (md5, sha256)."""
    return tuple(
        RemoteFile(f"{base_url}{stem}.gz", md5=md5, sha256=sha256) for stem, (md5, sha256) in checksums.items()
    )


REMOTE_FILES: dict[str, tuple[RemoteFile, ...]] = {
    "fashion-mnist": _idx_remote_files(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte": (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            "train-labels-idx1-ubyte": (
                "25c81989df183df01b3e8a0aad5dffbe",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            "t10k-images-idx3-ubyte": (
                "bef4ecab320f06d8554ea6380940ec79",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            "t10k-labels-idx1-ubyte": (
                "bb300cfdad3c16e7a12a480ee83cd310",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        },
    ),
    "mnist": _idx_remote_files(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte": (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train-labels-idx1-ubyte": (
                "d53e105ee54ea40749a09fcbcd1e9432",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "t10k-images-idx3-ubyte": (
                "9fb629c4189551a2d022fa330f9573f3",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "t10k-labels-idx1-ubyte": (
                "ec29112dd5afa0611ce80d1b7f02629c",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
    ),
    "cifar10": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            extract=True,
        ),
    ),
    "cifar100": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            md5="eb9058c3a382ffc7106e4002c42a8d85",
            sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            extract=True,
        ),
    ),
}
