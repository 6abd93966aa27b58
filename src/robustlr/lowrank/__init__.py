"""Robust low-rank layers and training (CondLR).

Every Linear/Conv2d weight, flattened to ``W ∈ R^{n×m}``, is stored as ``W = U S Vᵀ`` with orthonormal
``U``, ``V`` and a full ``r × r`` core ``S``; the :class:`CondLR` optimiser keeps ``κ(S) ≤ 1 + τ`` so the
compressed network stays well conditioned (Savostianova, Zangrando, Ceruti, Tudisco, NeurIPS 2023,
arXiv 2306.01485). Baselines: vanilla two-factor layers (:class:`FactorizedLinear`) and the orthogonal dense
network (:class:`QRProjectedSGD`). Export to plain PyTorch: :func:`to_plain`, :func:`to_dense`,
:func:`export_model`. Optional DLRT-style rank adaptivity: ``CondLR(..., theta=...)``.

>>> model = to_lowrank(model, rank=0.5)                       # doctest: +SKIP
>>> opt = CondLR(model, lr=0.05, momentum=0.45, tau=0.1)       # doctest: +SKIP
"""

from robustlr.lowrank.convert import CompressionReport, LayerCompression, compression_report, to_lowrank
from robustlr.lowrank.export import ParameterCounts, parameter_counts, to_dense, to_plain
from robustlr.lowrank.export_files import export_model
from robustlr.lowrank.factorized import FactorizedConv2d, FactorizedLinear
from robustlr.lowrank.layers import FactoredLayer, LowRankConv2d, LowRankLayer, LowRankLinear
from robustlr.lowrank.manifold import condition_projection, qr_retraction, tangent_projection
from robustlr.lowrank.optim import CondLR
from robustlr.lowrank.qr_sgd import QRProjectedSGD

__all__ = [
    "CompressionReport",
    "CondLR",
    "FactoredLayer",
    "FactorizedConv2d",
    "FactorizedLinear",
    "LayerCompression",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "ParameterCounts",
    "QRProjectedSGD",
    "compression_report",
    "condition_projection",
    "export_model",
    "parameter_counts",
    "qr_retraction",
    "tangent_projection",
    "to_dense",
    "to_lowrank",
    "to_plain",
]
