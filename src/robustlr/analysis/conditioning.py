"""Conditioning of networks: per-layer condition numbers, the network bound, spectral norms, orthogonality.

For a feed-forward network ``z_{ℓ+1} = σ_ℓ(W_ℓ z_ℓ)`` the relative condition number satisfies
``κ(f) ≤ ∏_ℓ κ(W_ℓ) · ∏_ℓ κ(σ_ℓ)`` with ``κ(W) = σ_max(W) / σ_min⁺(W)`` (smallest *nonzero* singular value).
For ``W = U S Vᵀ`` with orthonormal ``U``, ``V``, ``κ(W) = κ(S)``, which CondLR keeps ≤ 1 + τ
(Savostianova, Zangrando, Ceruti, Tudisco, NeurIPS 2023, arXiv 2306.01485).

Layers covered: the low-rank layers of :mod:`robustlr.lowrank` (``U S Vᵀ`` and ``A Bᵀ``) and dense
``nn.Linear``/``nn.Conv2d`` (kernel flattened to ``C_out × C_in·kh·kw``). Decompositions run in float64;
results are Python floats keyed by module name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustlr.lowrank.layers import FactoredLayer, LowRankLayer

__all__ = [
    "layer_condition_numbers",
    "layer_singular_values",
    "network_condition_bound",
    "orthogonality_errors",
    "spectral_norms",
]


def layer_singular_values(module: nn.Module) -> Tensor:
    """Nonzero singular values (descending) of a layer's flattened weight.

    ``U S Vᵀ`` layers: the singular values of the active core ``S`` (those of ``W`` when ``U``, ``V`` are
    orthonormal; check with :func:`orthogonality_errors`). ``A Bᵀ`` layers: computed from the ``r × r`` core of
    thin QRs of the factors. Dense layers: SVD of the flattened weight. Values at or below
    ``max(n, m)·eps·σ_max`` count as zero and are dropped.
    """
    with torch.no_grad():
        if isinstance(module, FactoredLayer):
            sigma = module.singular_values(torch.float64)
            size = max(module.matrix_shape)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            weight = module.weight.reshape(module.weight.shape[0], -1)
            sigma = torch.linalg.svdvals(weight.to(torch.float64))
            size = max(weight.shape)
        else:
            raise ValueError(f"module must be a Linear/Conv2d or a low-rank layer; got {type(module).__name__}")
    tolerance = sigma[:1] * size * torch.finfo(sigma.dtype).eps
    return sigma[sigma > tolerance]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, (FactoredLayer, nn.Linear, nn.Conv2d))
    ]


def layer_condition_numbers(model: nn.Module) -> dict[str, float]:
    """``κ = σ_max / σ_min⁺`` of every layer: of ``S`` for ``U S Vᵀ`` layers, of the weight otherwise.

    A layer whose weight is zero gets ``inf``.
    """
    result = {}
    for name, module in _layers(model):
        sigma = layer_singular_values(module)
        result[name] = float(sigma[0] / sigma[-1]) if sigma.numel() else math.inf
    return result


def network_condition_bound(model: nn.Module) -> float:
    """``∏_ℓ κ(W_ℓ)`` over all layers: the weight part of the bound on the network's condition number.

    The activation factors ``κ(σ_ℓ)`` are not included (1/α for LeakyReLU of slope α, unbounded for ReLU).
    """
    return math.prod(layer_condition_numbers(model).values())


def spectral_norms(model: nn.Module) -> dict[str, float]:
    """Largest singular value ``‖W‖₂`` of every layer's flattened weight (0 for a zero weight)."""
    result = {}
    for name, module in _layers(model):
        sigma = layer_singular_values(module)
        result[name] = float(sigma[0]) if sigma.numel() else 0.0
    return result


def orthogonality_errors(model: nn.Module) -> dict[str, float]:
    """``max(‖UᵀU − I‖_F, ‖VᵀV − I‖_F)`` of the active factors of every ``U S Vᵀ`` layer."""
    result = {}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLayer):
            u, _, v = module.factors()
            errors = []
            for basis in (u, v):
                gram = basis.detach().to(torch.float64)
                gram = gram.mT @ gram
                identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
                errors.append(float(torch.linalg.matrix_norm(gram - identity)))
            result[name] = max(errors)
    return result
