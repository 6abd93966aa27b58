"""Vanilla two-factor low-rank layers ``W = A Bᵀ`` (the "LoRA" / vanilla low-rank baseline of CondLR).

The factors ``A`` (n × r) and ``B`` (m × r) are unconstrained and meant to be trained by plain SGD. This is
the baseline against which CondLR (Savostianova et al., NeurIPS 2023, arXiv 2306.01485) shows that
unconstrained low-rank training lets the singular values of ``W`` spread and robustness drop. The geometry
(flattening, forward pass, dense conversion) is shared with :mod:`robustlr.lowrank.layers`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustlr.lowrank.geometry import Conv2dGeometry, LinearGeometry
from robustlr.lowrank.layers import FactoredLayer, resolve_rank, truncated_svd

__all__ = ["FactorizedConv2d", "FactorizedLayer", "FactorizedLinear"]


class FactorizedLayer(FactoredLayer):
    """Factorisation ``W = A Bᵀ`` with free factors; from a dense matrix the SVD is split evenly:
    ``A = U_r diag(√σ_r)``, ``B = V_r diag(√σ_r)``. Parameters: ``r(n + m)`` plus the bias."""

    A: nn.Parameter
    B: nn.Parameter

    def _init_factors(
        self, rank: int | float, bias: bool, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> None:
        n, m = self.matrix_shape
        r = resolve_rank(rank, n, m, "rank")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(n, r, **factory))
        self.B = nn.Parameter(torch.empty(m, r, **factory))
        self._init_bias(bias, factory)
        self.reset_parameters()

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def factors(self) -> tuple[Tensor, None, Tensor]:
        return self.A, None, self.B

    def _load_matrix(self, matrix: Tensor) -> None:
        u, sigma, v = truncated_svd(matrix, self.rank)
        root = sigma.sqrt()
        self.A.copy_(u * root)
        self.B.copy_(v * root)

    def _factor_repr(self) -> str:
        return f"rank={self.rank}"


class FactorizedLinear(LinearGeometry, FactorizedLayer):
    """Linear layer with ``W = A Bᵀ``: ``y = (x B) Aᵀ + b``. Arguments as :class:`LowRankLinear`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | float,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_factors(rank, bias, device, dtype)


class FactorizedConv2d(Conv2dGeometry, FactorizedLayer):
    """Convolution with flattened kernel ``W = A Bᵀ``: ``r`` filters ``Bᵀ``, then a 1×1 convolution with ``A``.
    Arguments as :class:`LowRankConv2d`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int | float,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self._init_factors(rank, bias, device, dtype)
