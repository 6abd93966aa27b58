"""Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or plain.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the row-major data.  Every part is checked: a corrupted or truncated
file raises ``ValueError`` naming the file instead of yielding a silently wrong array.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["parse_idx", "read_idx", "read_idx_dataset"]

_GZIP_MAGIC = b"\x1f\x8b"

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not, told apart by content) into a native-endian array.

    Raises:
        ValueError: naming the file, if it is not a valid gzip stream or not a well-formed IDX file.
    """
    path = Path(path)
    with path.open("rb") as handle:
        compressed = handle.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
    if not compressed:
        return parse_idx(path.read_bytes(), source=str(path))
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupted gzip stream ({error})") from error
    return parse_idx(raw, source=str(path))


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file; ``source`` names the file in error messages.

    Raises:
        ValueError: for a bad magic number, an unknown dtype code, zero dimensions, a truncated
            header, or a data section whose length does not match the dimensions.
    """
    if len(raw) < 4:
        raise ValueError(f"{source}: not an IDX file: {len(raw)} bytes, too short for the magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{source}: bad IDX magic number 0x{raw[:4].hex()}: its first two bytes must be zero")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{known_code:02x}" for known_code in _DTYPES)
        raise ValueError(f"{source}: unknown IDX dtype code 0x{code:02x}; known codes are {known}")
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions; at least 1 is needed")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise ValueError(
            f"{source}: {problem}: IDX dimensions {dims} of {dtype.name} need {expected} data bytes, "
            f"file has {found}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_dataset(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read an (images, labels) pair of IDX files into uint8 images ``(N, 1, H, W)`` and int64 labels ``(N,)``.

    Raises:
        ValueError: naming the file, if the images are not a 3-d uint8 array, the labels not a 1-d
            uint8 array, or their counts differ.
    """
    if len(paths) != 2:
        raise ValueError(f"paths must be (images file, labels file); got {len(paths)} paths: {list(paths)}")
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected 3-d uint8 images, got {images.ndim}-d {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected 1-d uint8 labels, got {labels.ndim}-d {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images[:, None], labels.astype(np.int64)
