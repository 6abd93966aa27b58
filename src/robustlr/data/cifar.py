"""Reader for the python-pickle releases of CIFAR-10 and CIFAR-100.

The batches are pickles written by Python 2: a dict with ``data`` (uint8 ``(N, 3072)``, each row the
red, green and blue 32x32 planes in row-major order) and a list of labels (``labels`` for CIFAR-10,
``fine_labels`` for CIFAR-100).  Unpickling can run arbitrary code, so they are loaded with
:class:`RestrictedUnpickler`, which resolves only the few numpy globals that rebuild an array.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "load_pickle", "read_cifar_dataset"]

# ndarray.__reduce__ names numpy's array-rebuilding function; taking it from there avoids importing
# a private module whose path moved between numpy 1 (numpy.core) and numpy 2 (numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

_IMAGE_SHAPE = (3, 32, 32)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals needed to rebuild arrays.

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``
    before it can be called.  The allowed objects are returned directly, so no module is imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a dataset pickle may only rebuild numpy arrays"
            ) from None


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Python 2 strings are decoded as latin-1, the encoding numpy needs to rebuild array buffers.
    """
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="latin1").load()


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``."""
    try:
        batch = load_pickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable CIFAR batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    # Python 2 str keys may come back as str or bytes depending on how the file was written.
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = [key for key in ("data", label_key) if key not in batch]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; found {sorted(map(str, batch))}")
    data = batch["data"]
    row = int(np.prod(_IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, {row}); got {type(data).__name__} {shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {label_key!r} has shape {labels.shape}")
    return data.reshape(-1, *_IMAGE_SHAPE), labels


def read_cifar_dataset(paths: Sequence[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR batch files into uint8 images ``(N, 3, 32, 32)`` and int64 labels.

    Args:
        paths: the batch files of one split, in order.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Raises:
        ValueError: naming the file, if a batch is not a valid CIFAR pickle.
    """
    if not paths:
        raise ValueError("paths must name at least one CIFAR batch file; got none")
    batches = [_read_batch(Path(path), label_key) for path in paths]
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])
