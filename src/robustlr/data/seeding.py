"""Per-sample random draws of data augmentation: a sample's draws depend on the epoch's seed and its key only.

A training epoch is described by an *augmentation seed* ``(s₁, …, s_k)`` of non-negative integers (the run's
epoch seed and the loader's pass number, see :class:`robustlr.data.loaders.SeededBatches`); sample ``n`` of the
dataset draws its uniforms from ``numpy.random.default_rng(SeedSequence((s₁, …, s_k, key_n)))``, where ``key_n``
is the sample's index in the dataset it was loaded as (:meth:`robustlr.data.ImageDataset.keys`).  NumPy's
``SeedSequence`` hashes the whole tuple into the generator's state (O'Neill's seed_seq design), so nearby keys
and seeds give unrelated streams.

Hence a sample is augmented the same way whatever batch, shard, worker process or position it is fetched in:
the shards of a distributed run fetch only their own samples, and a resumed run re-creates any epoch exactly,
without drawing the batches it skips.  The global RNGs of Python, NumPy and torch are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["AugmentSeed", "uniforms"]

AugmentSeed = tuple[int, ...]
"""The seed of one epoch's augmentation: non-negative integers (the sample's key is appended)."""


def uniforms(seed: AugmentSeed, keys: Sequence[int], count: int) -> np.ndarray:
    """``U[0, 1)`` draws, ``count`` per sample: row ``n`` is a function of ``(seed, keys[n])`` alone.

    Args:
        seed: the epoch's augmentation seed (non-negative integers).
        keys: one non-negative integer per sample (its index in the loaded dataset).
        count: draws per sample, >= 1.

    Returns:
        A float64 array of shape ``(len(keys), count)``.

    Raises:
        ValueError: for a negative seed entry or key (``SeedSequence`` takes non-negative integers only).
    """
    if any(int(part) < 0 for part in seed):
        raise ValueError(f"seed must hold integers >= 0; got {seed!r}")
    rows = np.empty((len(keys), count))
    for row, key in enumerate(keys):
        if int(key) < 0:
            raise ValueError(f"keys must be integers >= 0; got {int(key)}")
        rows[row] = np.random.default_rng((*map(int, seed), int(key))).random(count)
    return rows
