"""Batches of ``(x, y)`` for evaluation, from a tensor pair, a torch Dataset or a DataLoader.

A robustlr dataset (:class:`robustlr.data.ImageDataset`, also a lazily decoded
:class:`~robustlr.data.FolderDataset`) is read through :func:`robustlr.data.make_loader`: whole batches, decoded
by the dataset's worker processes while the model works.

Whatever the source, batches are re-chunked to exactly ``batch_size`` samples (the last one smaller), in the
source's order, and cut after the first ``n`` samples; every batch is checked to hold finite float images
``(N, C, H, W)`` and ``N`` integer labels (on the host); their values (finite, in ``[0, 1]``) are checked by the
caller, on the device, with the rest of the batch's checks (:func:`robustlr.evaluation.guards.clean_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from robustlr.data import ImageDataset, make_loader

from .guards import image_stats, raise_images

__all__ = ["Data", "Batch", "iter_batches", "num_batches", "check_batch"]

Batch = tuple[torch.Tensor, torch.Tensor]
Data = Union[tuple[torch.Tensor, torch.Tensor], Dataset, DataLoader]
"""What ``evaluate`` accepts as ``data``."""


def iter_batches(data: Data, batch_size: int, n: int | None) -> tuple[Iterator[Batch], int | None]:
    """Return an iterator over checked batches of ``data`` and the number of samples it will yield.

    The count is ``None`` when the source does not know its length (an iterable-style DataLoader).
    Raises ``ValueError`` naming ``data`` for an unsupported type, an empty source or mismatched x / y.
    """
    if isinstance(data, DataLoader):
        source: Iterable = data
        total = _length(data.dataset)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = check_batch(data, values=False)
        total = x.shape[0]
        source = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, total, batch_size))
    elif isinstance(data, Dataset):
        total = _length(data)
        if total is None:
            raise ValueError(f"data must be a Dataset with a length, got {type(data).__name__} without __len__")
        if isinstance(data, ImageDataset):
            source = make_loader(data if n is None or n >= total else data.subset(range(n)), batch_size)
        else:
            source = DataLoader(data if n is None or n >= total else Subset(data, range(n)), batch_size=batch_size)
    else:
        raise ValueError(
            f"data must be an (x, y) tensor pair, a torch Dataset or a DataLoader, got {type(data).__name__}"
        )
    if total == 0:
        raise ValueError("data must hold at least one sample, got an empty one")
    if total is not None and n is not None:
        total = min(total, n)
    return _rechunk(source, batch_size, n), total


def num_batches(total: int | None, batch_size: int) -> int | None:
    """Number of batches ``iter_batches`` yields for ``total`` samples (``None`` if unknown)."""
    return None if total is None else math.ceil(total / batch_size)


def _length(dataset: object) -> int | None:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _rechunk(source: Iterable, batch_size: int, limit: int | None) -> Iterator[Batch]:
    """Yield batches of exactly ``batch_size`` samples (the last smaller) from ``source``, at most ``limit``."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = seen = 0
    for batch in source:
        x, y = check_batch(batch, values=False)
        if limit is not None:
            x, y = x[: limit - seen], y[: limit - seen]
        seen += x.shape[0]
        held += x.shape[0]
        xs.append(x)
        ys.append(y)
        while held >= batch_size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:batch_size], y_all[:batch_size]
            xs, ys = [x_all[batch_size:]], [y_all[batch_size:]]
            held -= batch_size
        if limit is not None and seen >= limit:
            break
    if held:
        yield torch.cat(xs), torch.cat(ys)
    if seen == 0:
        raise ValueError("data must hold at least one sample, got none")


def check_batch(batch: object, values: bool = True) -> Batch:
    """``ValueError`` naming ``data`` unless ``batch`` is ``(x, y)``: float ``(N, C, H, W)`` images and ``N`` int
    labels; with ``values``, also finite images in ``[0, 1]`` (one device-to-host transfer)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"data must yield (x, y) pairs, got {type(batch).__name__}")
    x, y = batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"data must hold float images x of shape (N, C, H, W), got {got}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        got = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"data must hold integer labels y of shape (N,), got {got}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"data must have as many labels as images, got x with {x.shape[0]} and y with {y.shape[0]}")
    if values and x.numel():
        _check_unit_range(x)
    return x, y


def _check_unit_range(x: torch.Tensor) -> None:
    """``ValueError`` naming ``data`` unless ``x`` is finite with values in ``[0, 1]`` (one host transfer)."""
    raise_images(*image_stats(x).tolist())
