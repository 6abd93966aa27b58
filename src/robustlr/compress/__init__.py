"""Compress a trained network: a dense model → a robust low-rank one (CondLR), measured before and after.

>>> from robustlr.compress import compress                                                   # doctest: +SKIP
>>> result = compress(model, train, test, params=0.3, epochs=3, out="runs/compress")         # doctest: +SKIP
>>> result.rows()   # doctest: +SKIP (clean / robust accuracy, κ, stored weights, latency: dense and low-rank)
>>> result.saved_fraction, result.latency["ratio"], result.model                             # doctest: +SKIP

Modules: :mod:`~robustlr.compress.settings` (the settings, their defaults and the fine-tuning run they define),
:mod:`~robustlr.compress.pipeline` (:func:`compress`, :func:`load_compressed`), :mod:`~robustlr.compress.measure`
(evaluation and latency) and :mod:`~robustlr.compress.result` (the before/after table and its files). The ranks
are chosen by :mod:`robustlr.lowrank.rank_choice`; the fine-tuning is a :func:`robustlr.train.train` run.
"""

from .pipeline import compress, load_compressed
from .result import CompressionResult
from .settings import CompressSettings

__all__ = ["CompressSettings", "CompressionResult", "compress", "load_compressed"]
