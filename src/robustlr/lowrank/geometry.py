"""Geometry mixins of the factorised layers: how a Linear or Conv2d weight is seen as a matrix, and the forward
pass that never forms it.

A weight is the matrix ``W ∈ R^{n×m}`` obtained by flattening along the output mode: ``n = out_features`` /
``out_channels`` and ``m = in_features`` / ``in_channels·kh·kw``. With ``W = left · core · rightᵀ``
(``left`` n×r, ``core`` r×r or absent, ``right`` m×r, from the layer's ``factors()``):

* linear: ``y = ((x · right) · coreᵀ) · leftᵀ + b``;
* conv: a convolution of ``x`` with the ``r`` filters ``rightᵀ`` reshaped to ``r × C_in × kh × kw`` (same
  stride, padding, dilation and padding mode as the dense layer), then one 1×1 convolution with
  ``left · core`` plus the bias. Folding the core into the 1×1 convolution costs ``n r²`` once per call
  instead of ``r²`` per output pixel; measured on CPU it is 1.3–1.8× faster than a separate 1×1 convolution
  with ``core``. For linear layers the separate product is faster (the batch is usually smaller than ``n``).

The mixins are combined with :class:`robustlr.lowrank.layers.FactoredLayer` subclasses, which provide
``factors()``, ``rank`` and ``bias``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2dGeometry", "LinearGeometry"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_PADDING_STRINGS = ("same", "valid")


def _pair(value: int | tuple[int, ...], name: str, minimum: int) -> tuple[int, int]:
    """Validate an int or a pair of ints, each ``≥ minimum``, and return it as a pair."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in pair
    ):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}; got {value!r}")
    return int(pair[0]), int(pair[1])


class LinearGeometry:
    """Geometry mixin of a fully connected layer: ``W`` is the ``out_features × in_features`` weight."""

    in_features: int
    out_features: int

    def _init_geometry(self, in_features: int, out_features: int) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.out_features, self.in_features

    def forward(self, x: Tensor) -> Tensor:
        """``y = ((x · right) · coreᵀ) · leftᵀ + b`` over the last dimension of ``x``."""
        left, core, right = self.factors()  # type: ignore[attr-defined]
        z = x @ right
        if core is not None:
            z = F.linear(z, core)
        return F.linear(z, left, self.bias)  # type: ignore[attr-defined]

    def forward_macs(self, positions: int = 1) -> int:
        """``positions · (m r + r² + r n)``; the ``r²`` term only when there is a core."""
        n, m = self.matrix_shape
        r = self.rank  # type: ignore[attr-defined]
        core = r * r if self.factors()[1] is not None else 0  # type: ignore[attr-defined]
        return positions * (m * r + core + n * r)

    def _dense_spec(self) -> tuple[type[nn.Module], dict[str, Any]]:
        bias = self.bias is not None  # type: ignore[attr-defined]
        return nn.Linear, {"in_features": self.in_features, "out_features": self.out_features, "bias": bias}

    @classmethod
    def _geometry_from_dense(cls, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, nn.Linear):
            raise ValueError(f"module must be an nn.Linear for {cls.__name__}.from_dense; got {type(module)}")
        return {"in_features": module.in_features, "out_features": module.out_features}

    def _geometry_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Conv2dGeometry:
    """Geometry mixin of a 2-D convolution; ``W`` is the kernel flattened to ``C_out × (C_in·kh·kw)``.

    Supports stride, padding (int, pair, ``'same'``, ``'valid'``), dilation and the padding modes
    ``zeros``/``reflect``/``replicate``/``circular``, with ``nn.Conv2d``'s semantics. Grouped convolutions
    are refused: the flattened matrix of a grouped kernel is block diagonal, which this layer cannot express.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    padding_mode: str

    def _init_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int] | str,
        dilation: int | tuple[int, int],
        groups: int,
        padding_mode: str,
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if groups != 1:
            raise ValueError(
                f"groups must be 1: grouped convolutions have a block-diagonal flattened weight, which a "
                f"U S V^T factorisation cannot express; got groups={groups!r}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}; got {padding_mode!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = 1
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in _PADDING_STRINGS:
                raise ValueError(f"padding must be an int, a pair of ints or one of {_PADDING_STRINGS}; "
                                 f"got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in nn.Conv2d); got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", 0)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        kh, kw = self.kernel_size
        return self.out_channels, self.in_channels * kh * kw

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.out_channels, self.in_channels, *self.kernel_size

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """Padding as ``F.pad`` wants it: (left, right, top, bottom)."""
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            sides = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                sides += [total // 2, total - total // 2]
            return tuple(sides)  # type: ignore[return-value]
        ph, pw = self.padding
        return pw, pw, ph, ph

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with the ``r`` filters of ``right``, then one 1×1 convolution with ``left · core`` + b."""
        left, core, right = self.factors()  # type: ignore[attr-defined]
        filters = right.mT.reshape(right.shape[1], self.in_channels, *self.kernel_size)
        if self.padding_mode == "zeros":
            z = F.conv2d(x, filters, None, self.stride, self.padding, self.dilation)
        else:
            padded = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            z = F.conv2d(padded, filters, None, self.stride, 0, self.dilation)
        mix = left if core is None else left @ core
        return F.conv2d(z, mix[:, :, None, None], self.bias)  # type: ignore[attr-defined]

    def forward_macs(self, positions: int = 1) -> int:
        """``positions · (m r + r n)`` plus ``n r²`` once for folding the core into the 1×1 convolution."""
        n, m = self.matrix_shape
        r = self.rank  # type: ignore[attr-defined]
        fold = n * r * r if self.factors()[1] is not None else 0  # type: ignore[attr-defined]
        return positions * (m * r + n * r) + fold

    def _dense_spec(self) -> tuple[type[nn.Module], dict[str, Any]]:
        return nn.Conv2d, {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "bias": self.bias is not None,  # type: ignore[attr-defined]
            "padding_mode": self.padding_mode,
        }

    @classmethod
    def _geometry_from_dense(cls, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"module must be an nn.Conv2d for {cls.__name__}.from_dense; got {type(module)}")
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
            "padding_mode": module.padding_mode,
        }

    def _geometry_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding not in ("valid", (0, 0)):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text
