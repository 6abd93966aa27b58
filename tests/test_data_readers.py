"""Readers (IDX, CIFAR pickles), discovery, load_dataset, the real Debian Fashion-MNIST, and the
generated datasets.  Fixture files are written by the tests in the real on-disk layouts."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require
import torch

from robustlr.data import (
    DATA_ENV_VAR,
    DATASET_NAMES,
    SYSTEM_DATA_DIR,
    DataRootError,
    DatasetNotFoundError,
    ImageDataset,
    load_dataset,
    load_digits,
    load_pickle,
    make_synthetic,
    parse_idx,
    read_cifar_dataset,
    read_idx,
    search_dirs,
)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8, int32 or float32)."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist_layout(directory: Path, n_train: int = 30, n_test: int = 20, compress: bool = True) -> dict:
    """Write the four MNIST IDX files of random data; return the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


_RECONSTRUCT = np.empty(0).__reduce__()[0]


class Py2StylePickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote ``str`` (SHORT_BINSTRING / BINSTRING opcodes) and names
    numpy's array rebuilder by its numpy 1 path, as in the real CIFAR release (Python 2 cPickle)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_batch(path: Path, n: int, label_key: bytes, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(label) for label in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"fixture", b"data": data, label_key: labels, b"filenames": [b"x.png"] * n}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        Py2StylePickler(handle, protocol=2).dump(batch)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in path.read_bytes() and b"_codecs" not in path.read_bytes()
    return data, labels


def write_cifar10_layout(directory: Path, n: int = 4) -> dict[str, list]:
    batches = directory / "cifar-10-batches-py"
    names = {"train": [f"data_batch_{index}" for index in range(1, 6)], "test": ["test_batch"]}
    return {
        split: [write_cifar_batch(batches / name, n, b"labels", seed) for seed, name in enumerate(files)]
        for split, files in names.items()
    }


# --- IDX ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trips(tmp_path: Path, compress: bool, dtype: type) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else (
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    )
    path = write_idx(tmp_path / "array.idx", array, compress)
    read = read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: b"\x01" + raw[1:], "bad IDX magic number"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "unknown IDX dtype code 0x07"),
        (lambda raw: raw[:3] + b"\x00" + raw[4:], "0 dimensions"),
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw + b"\x00", "trailing bytes"),
        (lambda raw: raw[:10], "truncated IDX header"),
        (lambda raw: raw[:2], "too short"),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
def test_corrupted_idx_raises_value_error_naming_the_file(
    tmp_path: Path, corrupt, message: str, compress: bool
) -> None:
    raw = corrupt(idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8)))
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_truncated_gzip_stream_raises_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))[:-40])
    with pytest.raises(ValueError, match="corrupted gzip") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_parse_idx_reads_big_endian_values() -> None:
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 1, -2)
    np.testing.assert_array_equal(parse_idx(raw), [1, -2])


def test_images_and_labels_of_different_lengths_are_refused(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"30 images but .* 29 labels"):
        load_dataset("mnist", "train", root=tmp_path)


def test_labels_file_in_place_of_images_is_refused(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(20, dtype=np.uint8), compress=True)
    with pytest.raises(ValueError, match="expected 3-d uint8 images, got 1-d") as caught:
        load_dataset("mnist", "test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(caught.value)


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_layout(tmp_path: Path, compress: bool) -> None:
    arrays = write_mnist_layout(tmp_path, compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        dataset = load_dataset("mnist", split, root=tmp_path)
        images, labels = arrays[prefix]
        assert dataset.images.shape == (len(images), 1, 28, 28) and dataset.images.dtype == torch.float32
        torch.testing.assert_close(dataset.images[:, 0], torch.from_numpy(images).float() / 255)
        assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == labels.tolist()
        assert dataset.name == "mnist" and dataset.classes == [str(digit) for digit in range(10)]


# --- CIFAR ----------------------------------------------------------------------------------------------


def test_load_cifar10_layout(tmp_path: Path) -> None:
    written = write_cifar10_layout(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path)
    data = np.concatenate([batch for batch, _ in written["train"]])
    labels = [label for _, batch_labels in written["train"] for label in batch_labels]
    assert train.images.shape == (20, 3, 32, 32) and train.labels.tolist() == labels
    # Each row holds the red, green and blue planes, each 32x32 row-major.
    row, channel, y, x = 7, 2, 5, 30
    assert train.images[row, channel, y, x].item() == pytest.approx(data[row, channel * 1024 + y * 32 + x] / 255)
    assert train.classes[0] == "airplane" and train.num_classes == 10
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert len(test) == 4


def test_load_cifar100_layout_with_bytes_keys(tmp_path: Path) -> None:
    directory = tmp_path / "cifar100" / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": [99, 0, 42, 7, 13, 1][:n],
            b"coarse_labels": [0] * n,
        }
        with (directory / split).open("wb") as handle:
            pickle.dump(batch, handle, protocol=4)  # bytes stay bytes on loading
    train = load_dataset("cifar100", "train", root=tmp_path)  # found in <root>/cifar100
    assert train.images.shape == (6, 3, 32, 32) and train.labels.tolist() == [99, 0, 42, 7, 13, 1]
    assert train.num_classes == len(set(train.classes)) == 100 and train.classes[99] == "worm"
    assert len(load_dataset("cifar100", "test", root=tmp_path)) == 3


def test_cifar_batch_without_label_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, 2, b"labels", seed=0)
    with pytest.raises(ValueError, match="missing keys \\['fine_labels'\\]") as caught:
        read_cifar_dataset([path], label_key="fine_labels")
    assert str(path) in str(caught.value)


class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_restricted_unpickler_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"labels": [_RunsShellCommand(f"echo pwned > {marker}")]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_pickle(path)
    with pytest.raises(ValueError, match="not a readable CIFAR batch") as caught:
        read_cifar_dataset([path], label_key="labels")
    assert str(path) in str(caught.value)
    assert not marker.exists()
    # Control: the payload is live, an unrestricted unpickler would have run it.
    pickle.loads(path.read_bytes())
    assert marker.read_text().strip() == "pwned"


def test_restricted_unpickler_refuses_builtins(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"f": eval}))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        load_pickle(path)


# --- discovery and load_dataset arguments ---------------------------------------------------------------


def test_discovery_order_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert search_dirs("mnist") == [
        tmp_path / "env",
        tmp_path / "env" / "mnist",
        tmp_path / "home" / ".cache" / "robustlr" / "mnist",
        SYSTEM_DATA_DIR / "mnist",
    ]
    assert search_dirs("mnist", tmp_path / "root") == [tmp_path / "root", tmp_path / "root" / "mnist"]  # root alone
    write_mnist_layout(tmp_path / "env" / "mnist", n_train=10)
    assert len(load_dataset("mnist", "train")) == 10  # found through $ROBUSTLR_DATA/<name>
    write_mnist_layout(tmp_path / "root", n_train=12)
    assert len(load_dataset("mnist", "train", root=tmp_path / "root")) == 12


def test_env_var_keeps_searching_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    write_mnist_layout(tmp_path / "env", n_train=10)
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_mnist_layout(tmp_path / "home" / ".cache" / "robustlr" / "mnist", n_test=7)
    assert len(load_dataset("mnist", "train")) == 10 and len(load_dataset("mnist", "test")) == 7


@pytest.fixture
def data_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A complete MNIST in $ROBUSTLR_DATA, which a named root must never fall back to."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    write_mnist_layout(tmp_path / "env" / "mnist")
    assert len(load_dataset("mnist", "test")) == 20
    return tmp_path


ROOT_IS_ONLY_PLACE = "A root you name is the only place looked in"


def test_a_root_that_does_not_exist_is_an_error_naming_it(data_elsewhere: Path) -> None:
    root = data_elsewhere / "typo"
    with pytest.raises(DataRootError) as caught:
        load_dataset("mnist", "test", root=root)
    assert str(caught.value) == (
        f"mnist (test split) not found: root= (CLI: --data-root) {root} does not exist. {ROOT_IS_ONLY_PLACE}: "
        f"name the directory holding the files, or leave the root out to search $ROBUSTLR_DATA, ~/.cache/robustlr "
        f"and {SYSTEM_DATA_DIR}"
    )
    assert isinstance(caught.value, DatasetNotFoundError) and caught.value.root == root
    assert caught.value.searched == (root, root / "mnist")


def test_a_root_that_is_a_file_is_an_error_naming_it(data_elsewhere: Path) -> None:
    root = data_elsewhere / "train-images-idx3-ubyte.gz"
    root.write_bytes(b"not a directory")
    with pytest.raises(NotADirectoryError, match=f"^root= \\(CLI: --data-root\\) {root} is not a directory"):
        load_dataset("mnist", "train", root=root)


def test_an_empty_root_is_an_error_naming_what_it_lacks(data_elsewhere: Path) -> None:
    root = data_elsewhere / "empty"
    root.mkdir()
    with pytest.raises(DataRootError) as caught:
        load_dataset("mnist", "train", root=root)
    assert (f"{root} lacks train-images-idx3-ubyte.gz (or train-images-idx3-ubyte), train-labels-idx1-ubyte.gz "
            f"(or train-labels-idx1-ubyte) (looked in {root} and {root / 'mnist'}). {ROOT_IS_ONLY_PLACE}") \
        in str(caught.value)


def test_a_root_without_the_labels_file_names_it(data_elsewhere: Path) -> None:
    root = data_elsewhere / "root"
    write_mnist_layout(root / "mnist")
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_dataset("mnist", "train", root=root)) == 30  # the train split is complete
    with pytest.raises(DataRootError) as caught:
        load_dataset("mnist", "test", root=root)
    assert caught.value.missing == ("t10k-labels-idx1-ubyte",)
    assert f"{root} lacks t10k-labels-idx1-ubyte.gz (or t10k-labels-idx1-ubyte) (looked in" in str(caught.value)


@pytest.mark.parametrize("root", ["", 3, b"/tmp"])
def test_a_root_that_is_not_a_path_is_refused(root: object) -> None:
    with pytest.raises(ValueError, match=f"^root \\(CLI: --data-root\\) must be a directory path; got {root!r}$"):
        load_dataset("mnist", "train", root=root)


def test_missing_dataset_error_lists_places_and_remedies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr("robustlr.data.discovery.SYSTEM_DATA_DIR", tmp_path / "system")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", "train")
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    message = str(error)
    for directory in error.searched:
        assert str(directory) in message
    assert str(tmp_path / "home" / ".cache" / "robustlr") in message and "Tried:" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and "--data-root" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "system" / "fashion-mnist") in message
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", "test")
    assert "apt-get" not in str(caught.value) and "cifar-10-batches-py/test_batch" in str(caught.value)


def test_missing_split_file_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    write_mnist_layout(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_dataset("mnist", "train", root=tmp_path)) == 30
    with pytest.raises(DatasetNotFoundError, match="mnist \\(test split\\) not found"):
        load_dataset("mnist", "test", root=tmp_path)


def test_unknown_dataset_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="name must be one of") as caught:
        load_dataset("imagenet", "train")
    assert "'imagenet'" in str(caught.value)
    for name in DATASET_NAMES:
        assert repr(name) in str(caught.value)


@pytest.mark.parametrize("split", ["val", "Train", "", None])
def test_bad_split_is_refused(split: object) -> None:
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'; got") as caught:
        load_dataset("synthetic", split)
    assert repr(split) in str(caught.value)


def test_options_only_for_synthetic() -> None:
    with pytest.raises(ValueError, match="only accepted by name='synthetic'"):
        load_dataset("mnist", "train", n=10)


# --- the real Debian Fashion-MNIST ----------------------------------------------------------------------


def test_real_fashion_mnist_from_debian_package() -> None:
    directory = SYSTEM_DATA_DIR / "fashion-mnist"
    if not directory.is_dir():
        pytest.fail(f"{directory} is missing: install it with `apt-get install dataset-fashion-mnist`")
    for split, n in (("train", 60000), ("test", 10000)):
        dataset = load_dataset("fashion-mnist", split, root=directory)
        assert dataset.images.shape == (n, 1, 28, 28) and dataset.images.dtype == torch.float32
        assert dataset.images.min() >= 0 and dataset.images.max() <= 1 and dataset.images.max() > 0.99
        assert torch.bincount(dataset.labels, minlength=10).tolist() == [n // 10] * 10
        assert dataset.classes == FASHION_MNIST_CLASSES and dataset.num_classes == 10
        assert dataset.mean.shape == (1,) and dataset.std.shape == (1,)
        if split == "train":
            train = dataset
    # The widely quoted statistics of the training images.
    assert train.mean.item() == pytest.approx(0.2860, abs=1e-3)
    assert train.std.item() == pytest.approx(0.3530, abs=1e-3)


# --- generated datasets and ImageDataset ----------------------------------------------------------------


def test_synthetic_is_seeded_shaped_and_learnable() -> None:
    train = load_dataset("synthetic", "train", n=200, shape=(3, 8, 8), num_classes=4, seed=3)
    again = make_synthetic("train", n=200, shape=(3, 8, 8), num_classes=4, seed=3)
    torch.testing.assert_close(train.images, again.images)
    assert train.images.shape == (200, 3, 8, 8) and torch.bincount(train.labels).tolist() == [50] * 4
    assert not torch.equal(make_synthetic(n=200, shape=(3, 8, 8), num_classes=4, seed=4).images, train.images)
    test = make_synthetic("test", n=100, shape=(3, 8, 8), num_classes=4, seed=3)
    assert not torch.equal(test.images[:10], train.images[:10])
    # A nearest-centroid classifier fitted on train classifies test well: the labels are learnable.
    centroids = torch.stack([train.images[train.labels == label].mean(0) for label in range(4)])
    distances = torch.cdist(test.images.flatten(1), centroids.flatten(1))
    assert (distances.argmin(1) == test.labels).float().mean() > 0.95


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"n": 0}, "n"),
        ({"num_classes": 1}, "num_classes"),
        ({"seed": -1}, "seed"),
        ({"shape": (1, 8)}, "shape"),
        ({"shape": (1, 0, 8)}, "shape"),
        ({"shape": 28}, "shape"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_synthetic_bad_options(options: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        make_synthetic(**options)


def test_digits() -> None:
    require("sklearn", "the digits dataset needs scikit-learn, part of the dev extra")
    train, test = load_dataset("digits", "train"), load_digits("test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.max() == 1 and train.images.min() == 0 and train.num_classes == 10
    assert torch.equal(load_digits("test").images, test.images)


def test_digits_without_sklearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="needs scikit-learn: pip install scikit-learn"):
        load_digits("train")


def test_image_dataset_validates_and_indexes() -> None:
    images, labels = torch.rand(6, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    dataset = ImageDataset(images, labels, name="toy", classes=["a", "b", "c"], transform=lambda x: 1 - x)
    x, y = dataset[1]
    torch.testing.assert_close(x, 1 - images[1])
    assert y.item() == 1 and len(dataset) == 6 and dataset.image_shape == (2, 4, 4)
    batch_x, batch_y = dataset[[0, 5]]
    assert batch_x.shape == (2, 2, 4, 4) and batch_y.tolist() == [0, 2]
    torch.testing.assert_close(dataset.mean, images.mean(dim=(0, 2, 3)))
    with pytest.raises(ValueError, match="images must lie in \\[0, 1\\]"):
        ImageDataset(images * 2, labels, name="toy", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="images must be a 4-d"):
        ImageDataset(images[0], labels, name="toy", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels must lie in \\[0, 1\\]"):
        ImageDataset(images, labels, name="toy", classes=["a", "b"])
    with pytest.raises(ValueError, match="labels must be a \\(6,\\) integer tensor"):
        ImageDataset(images, labels[:5], name="toy", classes=["a", "b", "c"])
