"""Low-rank layers ``W = U S Vᵀ`` (CondLR) and the machinery they share with the two-factor baseline.

A Linear or Conv2d weight is handled as the matrix ``W ∈ R^{n×m}`` obtained by flattening along the output
mode; a layer stores ``W`` as ``left · core · rightᵀ`` (``left`` n×r, ``core`` r×r or absent, ``right`` m×r)
and never forms ``W`` in its forward pass (the forward passes and shapes are the geometry mixins of
:mod:`robustlr.lowrank.geometry`).

The CondLR layers (Savostianova, Zangrando, Ceruti, Tudisco, NeurIPS 2023, arXiv 2306.01485) use
``left = U``, ``core = S``, ``right = V`` with orthonormal ``U``, ``V`` and a full ``r × r`` core ``S``. The
parameters ``U``, ``S``, ``V`` are allocated at a capacity ``max_rank ≥ rank`` and only the leading ``rank``
columns are active (the rest is kept at zero), so a rank-adaptive optimiser can change the rank while the
parameter shapes, the optimiser state and the ``state_dict`` keys stay fixed.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any, Self

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from robustlr.lowrank.geometry import Conv2dGeometry, LinearGeometry
from robustlr.lowrank.manifold import linalg_dtype, svd

__all__ = [
    "FactoredLayer",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "resolve_rank",
    "truncated_svd",
    "write_leading_block",
]


def resolve_rank(rank: int | float, n: int, m: int, name: str = "rank") -> int:
    """Turn a rank specification for an ``n × m`` matrix into an integer rank.

    An int must lie in ``[1, min(n, m)]``. A float is a fraction ``f ∈ (0, 1]`` of the full rank:
    ``r = max(1, ceil(f · min(n, m)))`` (the product is rounded to 9 decimals first, so ``0.3 · 10`` gives 3).
    """
    full = min(n, m)
    allowed = f"an int in [1, {full}] or a float fraction in (0, 1] of min(n, m) = {full}"
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        if not 1 <= rank <= full:
            raise ValueError(f"{name} must be {allowed}; got {rank!r}")
        return int(rank)
    if isinstance(rank, numbers.Real) and not isinstance(rank, bool):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"{name} must be {allowed}; got {rank!r}")
        return max(1, math.ceil(round(float(rank) * full, 9)))
    raise ValueError(f"{name} must be {allowed}; got {rank!r}")


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Leading ``rank`` singular triplets ``(U_r, σ_r, V_r)`` of ``matrix`` (n × m), in the matrix's dtype.

    ``U_r diag(σ_r) V_rᵀ`` is a best rank-r approximation in every unitarily invariant norm
    (Eckart–Young–Mirsky); its Frobenius error is ``‖σ_{r+1:}‖₂``.
    """
    u, sigma, vh = svd(matrix.to(linalg_dtype(matrix.dtype)))
    cast = matrix.dtype
    return u[:, :rank].to(cast), sigma[:rank].to(cast), vh[:rank].mT.to(cast)


@torch.no_grad()
def write_leading_block(target: Tensor, value: Tensor) -> None:
    """Copy ``value`` into the leading block of ``target`` (same number of dims) and zero the rest.

    This is how active factors of rank ``r`` are stored in parameters (and optimiser buffers) allocated at a
    larger capacity. ``value`` may be a view of that leading block.
    """
    block = tuple(slice(0, size) for size in value.shape)
    target[block].copy_(value)
    for dim, size in enumerate(value.shape):
        if size < target.shape[dim]:
            target[(*block[:dim], slice(size, None))].zero_()


class FactoredLayer(nn.Module, metaclass=abc.ABCMeta):
    """A layer whose flattened weight ``W ∈ R^{n×m}`` is stored as ``left · core · rightᵀ``.

    Subclasses combine a geometry mixin (:mod:`robustlr.lowrank.geometry`: how ``W`` acts
    on inputs, how it maps to a dense module) with a factorisation (:class:`LowRankLayer` here, or the
    two-factor baseline in :mod:`robustlr.lowrank.factorized`: which parameters hold the factors).
    """

    bias: nn.Parameter | None

    # -- provided by the geometry mixin --------------------------------------------------------------
    @property
    @abc.abstractmethod
    def matrix_shape(self) -> tuple[int, int]:
        """``(n, m)``: shape of the flattened weight."""

    @property
    @abc.abstractmethod
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the dense module's weight tensor."""

    @abc.abstractmethod
    def _dense_spec(self) -> tuple[type[nn.Module], dict[str, Any]]:
        """Dense module class and constructor arguments with the same geometry."""

    @classmethod
    @abc.abstractmethod
    def _geometry_from_dense(cls, module: nn.Module) -> dict[str, Any]:
        """Constructor arguments of this layer that reproduce ``module``'s geometry."""

    @abc.abstractmethod
    def _geometry_repr(self) -> str:
        """Geometry part of ``extra_repr``."""

    @abc.abstractmethod
    def forward_macs(self, positions: int = 1) -> int:
        """Multiply-adds of one forward pass that produces ``positions`` output vectors of length ``n``
        (1 per sample for a linear layer on a vector, ``H_out·W_out`` per image for a convolution)."""

    # -- provided by the factorisation ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """Current rank ``r`` of the factorisation."""

    @abc.abstractmethod
    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(left, core, right)`` with ``W = left · core · rightᵀ`` (``core`` is None for two factors)."""

    @abc.abstractmethod
    def _load_matrix(self, matrix: Tensor) -> None:
        """Set the factors to the best rank-``self.rank`` approximation of ``matrix`` (n × m)."""

    @abc.abstractmethod
    def _factor_repr(self) -> str:
        """Factorisation part of ``extra_repr``."""

    # -- shared --------------------------------------------------------------------------------------
    @property
    def full_rank(self) -> int:
        """``min(n, m)``: the largest possible rank of the flattened weight."""
        return min(self.matrix_shape)

    def _init_bias(self, bias: bool, factory: dict[str, Any]) -> None:
        out = self.matrix_shape[0]
        self.bias = nn.Parameter(torch.empty(out, **factory)) if bias else None

    def reset_parameters(self) -> None:
        """Initialise like torch's dense layer, then factorise.

        A dense ``W₀`` is drawn with ``kaiming_uniform_(a=√5)`` (entries ``U(±1/√m)``) and the bias with
        ``U(±1/√m)``, in the same order and on the same shapes as ``nn.Linear``/``nn.Conv2d``, so the same
        seed gives the same ``W₀``; the factors are then the truncated SVD of ``W₀``.
        """
        reference = next(self.parameters())
        dense = torch.empty(self.matrix_shape, device=reference.device, dtype=reference.dtype)
        nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
        with torch.no_grad():
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.matrix_shape[1])
                nn.init.uniform_(self.bias, -bound, bound)
            self._load_matrix(dense)

    def weight_matrix(self) -> Tensor:
        """The flattened dense weight ``W = left · core · rightᵀ`` (n × m). For analysis, not the forward."""
        left, core, right = self.factors()
        if core is not None:
            left = left @ core
        return left @ right.mT

    @property
    def weight(self) -> Tensor:
        """The dense weight tensor, shaped like the dense module's ``weight`` (for analysis only)."""
        return self.weight_matrix().reshape(self.weight_shape)

    def singular_values(self, dtype: torch.dtype | None = None) -> Tensor:
        """The ``rank`` largest singular values of ``W`` in descending order, without forming ``W``.

        With thin QR decompositions ``left = Q_l R_l``, ``right = Q_r R_r`` we have
        ``W = Q_l (R_l · core · R_rᵀ) Q_rᵀ``, whose singular values are those of the small r × r middle.
        ``dtype`` is the computation precision (default: float32, or float64 for float64 parameters).
        """
        left, core, right = self.factors()
        work = dtype or linalg_dtype(left.dtype)
        r_left = torch.linalg.qr(left.detach().to(work), mode="r")[1]
        r_right = torch.linalg.qr(right.detach().to(work), mode="r")[1]
        middle = r_left if core is None else r_left @ core.detach().to(work)
        return torch.linalg.svdvals(middle @ r_right.mT)

    @classmethod
    def from_dense(cls, module: nn.Module, rank: int | float, **kwargs: Any) -> Self:
        """Factorise a dense ``module`` by truncated SVD of its flattened weight at ``rank``.

        ``rank`` is an int in ``[1, min(n, m)]`` or a fraction in ``(0, 1]`` of ``min(n, m)``; at full rank
        the layer reproduces the dense module's output up to rounding. The bias is copied. Extra keyword
        arguments go to the constructor. Device and dtype follow the module's weight.
        """
        geometry = cls._geometry_from_dense(module)
        weight = module.weight
        layer = skip_init(
            cls,
            **geometry,
            rank=rank,
            bias=module.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            layer._load_matrix(weight.detach().reshape(layer.matrix_shape))
            if layer.bias is not None:
                layer.bias.copy_(module.bias)
        return layer

    def to_dense(self) -> nn.Module:
        """An ``nn.Linear``/``nn.Conv2d`` with the same geometry, weight ``W`` and bias."""
        dense_cls, kwargs = self._dense_spec()
        reference = next(self.parameters())
        dense = skip_init(dense_cls, **kwargs, device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"{self._geometry_repr()}, {self._factor_repr()}, bias={self.bias is not None}"


class LowRankLayer(FactoredLayer):
    """CondLR factorisation ``W = U S Vᵀ``: ``U`` (n × r) and ``V`` (m × r) with orthonormal columns, a full
    ``r × r`` core ``S``, and a bias.

    ``U``, ``S``, ``V`` are the module's parameters, allocated at a capacity ``max_rank`` (``≥ rank``); the
    active factors are ``U[:, :r]``, ``S[:r, :r]``, ``V[:, :r]`` and the rest is zero. The current rank is
    part of the ``state_dict`` (extra state), so checkpoints survive rank changes.
    """

    U: nn.Parameter
    S: nn.Parameter
    V: nn.Parameter

    def _init_factors(
        self,
        rank: int | float,
        bias: bool,
        max_rank: int | float | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        n, m = self.matrix_shape
        self._rank = resolve_rank(rank, n, m, "rank")
        capacity = self._rank if max_rank is None else resolve_rank(max_rank, n, m, "max_rank")
        if capacity < self._rank:
            raise ValueError(f"max_rank must be >= rank = {self._rank}; got {max_rank!r} (= {capacity})")
        factory = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(n, capacity, **factory))
        self.S = nn.Parameter(torch.empty(capacity, capacity, **factory))
        self.V = nn.Parameter(torch.empty(m, capacity, **factory))
        self._init_bias(bias, factory)
        self.reset_parameters()

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def max_rank(self) -> int:
        """Capacity: the largest rank this layer can take without reallocating its parameters."""
        return self.U.shape[1]

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Active ``(U, S, V)``: views of the leading ``rank`` columns."""
        r = self._rank
        return self.U[:, :r], self.S[:r, :r], self.V[:, :r]

    @torch.no_grad()
    def set_factors(self, u: Tensor, s: Tensor, v: Tensor) -> None:
        """Replace the active factors (and the rank, which is ``s.shape[0]``); the unused capacity is zeroed."""
        n, m = self.matrix_shape
        r = s.shape[0]
        if not (u.shape == (n, r) and s.shape == (r, r) and v.shape == (m, r) and 1 <= r <= self.max_rank):
            raise ValueError(
                f"factors must have shapes ({n}, r), (r, r), ({m}, r) with 1 <= r <= max_rank = {self.max_rank}; "
                f"got {tuple(u.shape)}, {tuple(s.shape)}, {tuple(v.shape)}"
            )
        for target, value in ((self.U, u), (self.S, s), (self.V, v)):
            write_leading_block(target, value)
        self._rank = r

    def _load_matrix(self, matrix: Tensor) -> None:
        u, sigma, v = truncated_svd(matrix, self._rank)
        self.set_factors(u, torch.diag(sigma), v)

    def singular_values(self, dtype: torch.dtype | None = None) -> Tensor:
        """Singular values of the active ``S`` (descending): those of ``W`` when ``U``, ``V`` are orthonormal.
        ``dtype`` is the computation precision (default: float32, or float64 for float64 parameters)."""
        s = self.factors()[1].detach()
        return torch.linalg.svdvals(s.to(dtype or linalg_dtype(s.dtype)))

    def get_extra_state(self) -> dict[str, int]:
        return {"rank": self._rank}

    def set_extra_state(self, state: dict[str, int]) -> None:
        rank = state["rank"]
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"stored rank must be in [1, max_rank = {self.max_rank}]; got {rank!r}")
        self._rank = int(rank)

    def _factor_repr(self) -> str:
        text = f"rank={self._rank}"
        return text if self.max_rank == self._rank else f"{text}, max_rank={self.max_rank}"


class LowRankLinear(LinearGeometry, LowRankLayer):
    """Linear layer with weight ``W = U S Vᵀ`` (CondLR); ``y = ((x V) Sᵀ) Uᵀ + b``.

    Args:
        in_features, out_features: as ``nn.Linear`` (``m`` and ``n``).
        rank: int in ``[1, min(n, m)]`` or fraction in ``(0, 1]`` of ``min(n, m)`` (rounded up).
        bias: whether to learn an additive bias.
        max_rank: capacity for rank-adaptive training (int or fraction; default ``rank``).

    A fresh layer is the truncated SVD of torch's default dense initialisation. Parameters:
    ``r(n + m) + r² + n`` at capacity ``r``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | float,
        bias: bool = True,
        *,
        max_rank: int | float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_factors(rank, bias, max_rank, device, dtype)


class LowRankConv2d(Conv2dGeometry, LowRankLayer):
    """2-D convolution whose flattened kernel ``C_out × (C_in·kh·kw)`` is ``W = U S Vᵀ`` (CondLR).

    Forward: convolution with the ``r`` filters ``Vᵀ`` (reshaped to ``r × C_in × kh × kw``), then a 1×1
    convolution with ``U S`` plus the bias. Arguments as ``nn.Conv2d`` (``groups`` must be 1), plus ``rank``
    and ``max_rank`` as in :class:`LowRankLinear`. ``bias=False`` creates no bias.
    """

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
        max_rank: int | float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self._init_factors(rank, bias, max_rank, device, dtype)
