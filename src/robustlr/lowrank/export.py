"""A low-rank model as standard PyTorch modules: :func:`to_plain` (two thin layers per low-rank layer) and
:func:`to_dense` (``W = U S Vᵀ`` multiplied out), with the parameter counts of each.

Both return a new model (a deep copy; the source is untouched) in which every factored layer
(:class:`~robustlr.lowrank.LowRankLinear`/``LowRankConv2d`` with ``W = U S Vᵀ`` from CondLR, Savostianova et
al., NeurIPS 2023, arXiv 2306.01485, and the two-factor ``A Bᵀ`` baseline) is replaced by ``nn.Linear`` /
``nn.Conv2d`` modules; every other module is kept as it is, and every module keeps its own train/eval flag, its
device and its dtype. Outputs are the source model's in both modes up to float rounding.

:func:`to_plain` keeps the compression: a layer of flattened weight ``W ∈ R^{n×m}`` at rank ``r`` becomes

* Linear: ``nn.Sequential(nn.Linear(m, r, bias=False), nn.Linear(r, n))`` with weights ``Vᵀ`` and ``U S``;
* Conv2d: ``nn.Sequential(nn.Conv2d(C_in, r, k, stride, padding, dilation, padding_mode, bias=False),
  nn.Conv2d(r, n, 1))``: the ``r`` filters ``Vᵀ`` reshaped to ``r × C_in × kh × kw``, then a 1×1 convolution
  with ``U S``; the bias is on the second module.

Where the core goes: ``S`` is folded into the *second* factor (``U S``, computed once in float64 and rounded
once). The first factor ``Vᵀ`` then has orthonormal rows, so the ``r`` intermediate activations are bounded by
the input (``‖Vᵀx‖ ≤ ‖x‖``) whatever the spectrum of ``S``, which keeps them in range in float32 and below. A
balanced split ``√S`` on each side would need an SVD of the full ``r × r`` core (an extra rounding of both
factors) without a better bound: with orthonormal ``U``, ``V`` the float32 error bound of the two products,
about ``u · ‖S‖ ‖x‖``, is the same wherever ``S`` goes. Measured once on a trained LeNet5 at rank 0.3 whose
cores were made full with singular values spread over 100×, the largest float32 logit error against float64 was
5.1e-7 with ``S`` in the second factor, 4.8e-7 in the first, 4.2e-7 balanced and 5.8e-7 for the low-rank layers
themselves (logits up to 0.84): the same within rounding. The convolution then makes the same two convolutions as
:class:`~robustlr.lowrank.LowRankConv2d`'s own forward pass. A two-factor ``A Bᵀ`` layer maps to ``Bᵀ`` then
``A`` unchanged. The plain model has ``r (n + m) + bias`` parameters per layer: the ``U S Vᵀ`` layer's without
the ``r²`` of the core.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from robustlr.lowrank.convert import _swap, compression_report
from robustlr.lowrank.geometry import Conv2dGeometry, LinearGeometry
from robustlr.lowrank.layers import FactoredLayer

__all__ = ["ParameterCounts", "factored_layers", "parameter_counts", "to_dense", "to_plain"]


def factored_layers(model: nn.Module) -> list[tuple[str, FactoredLayer]]:
    """``(name, layer)`` of every low-rank layer of ``model`` (``U S Vᵀ`` or ``A Bᵀ``), in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, FactoredLayer)]


def _two_factors(layer: FactoredLayer) -> tuple[Tensor, Tensor]:
    """``(first, second)`` with ``W = second · first``: ``first = rightᵀ`` (r × m) and ``second = left · core``
    (n × r), the product taken in float64 and rounded once to the layer's dtype."""
    left, core, right = (None if t is None else t.detach() for t in layer.factors())
    second = left if core is None else (left.double() @ core.double()).to(left.dtype)
    return right.mT.contiguous(), second.contiguous()


def _plain_linear(layer: FactoredLayer) -> nn.Sequential:
    first, second = _two_factors(layer)
    n, m = layer.matrix_shape
    factory = {"device": first.device, "dtype": first.dtype}
    reduce = skip_init(nn.Linear, m, layer.rank, bias=False, **factory)
    expand = skip_init(nn.Linear, layer.rank, n, bias=layer.bias is not None, **factory)
    return _filled(reduce, expand, first, second, layer)


def _plain_conv(layer: FactoredLayer) -> nn.Sequential:
    if layer.groups != 1:
        raise ValueError(f"layer groups must be 1 (a grouped convolution has a block-diagonal flattened weight); "
                         f"got groups={layer.groups!r}")
    first, second = _two_factors(layer)
    factory = {"device": first.device, "dtype": first.dtype}
    reduce = skip_init(
        nn.Conv2d, layer.in_channels, layer.rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode, **factory,
    )
    expand = skip_init(nn.Conv2d, layer.rank, layer.out_channels, 1, bias=layer.bias is not None, **factory)
    filters = first.reshape(layer.rank, layer.in_channels, *layer.kernel_size)
    return _filled(reduce, expand, filters, second[:, :, None, None], layer)


def _filled(reduce: nn.Module, expand: nn.Module, first: Tensor, second: Tensor, layer: FactoredLayer) -> nn.Sequential:
    """``nn.Sequential(reduce, expand)`` with the given weights, ``layer``'s bias on ``expand`` and its mode."""
    with torch.no_grad():
        reduce.weight.copy_(first)
        expand.weight.copy_(second)
        if layer.bias is not None:
            expand.bias.copy_(layer.bias)
    return nn.Sequential(reduce, expand).train(layer.training)


def _plain(layer: FactoredLayer) -> nn.Module:
    if isinstance(layer, LinearGeometry):
        return _plain_linear(layer)
    if isinstance(layer, Conv2dGeometry):
        return _plain_conv(layer)
    raise ValueError(f"layer must be a low-rank Linear or Conv2d; got {type(layer).__name__}")


def _dense(layer: FactoredLayer) -> nn.Module:
    return layer.to_dense().train(layer.training)


def _replaced(model: nn.Module, build: Callable[[FactoredLayer], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with every factored layer replaced by ``build(layer)`` (a shared layer by one
    module shared in the same places)."""
    copied = copy.deepcopy(model)
    if isinstance(copied, FactoredLayer):
        return build(copied)
    replacements = {id(layer): build(layer) for _, layer in factored_layers(copied)}
    _swap(copied, replacements)
    return copied


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every low-rank layer is two standard layers of its rank (see the module
    docstring): ``nn.Linear(m, r) → nn.Linear(r, n)`` or ``nn.Conv2d(C_in, r, k) → nn.Conv2d(r, n, 1)``, with
    ``S`` folded into the second; it has ``r (n + m) + bias`` parameters per layer and the same outputs.

    Raises:
        ValueError: if ``model`` is not an ``nn.Module`` or has no low-rank layer (nothing to convert:
            :func:`to_dense` exports any model).
    """
    _check_model(model)
    if not factored_layers(model):
        raise ValueError(f"model has no low-rank layer (LowRankLinear, LowRankConv2d, FactorizedLinear, "
                         f"FactorizedConv2d) to convert; got a {type(model).__name__} of standard layers only")
    return _replaced(model, _plain)


def to_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every low-rank layer is the ``nn.Linear``/``nn.Conv2d`` of weight
    ``W = U S Vᵀ`` (``A Bᵀ``) and the same bias; a model without low-rank layers is copied as it is.

    Raises:
        ValueError: if ``model`` is not an ``nn.Module``.
    """
    _check_model(model)
    return _replaced(model, _dense)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a model three ways, at the layers' active ranks (unused rank capacity not counted).

    ``lowrank``: the model as it is (``r(n + m) + r² + bias`` per ``U S Vᵀ`` layer); ``plain``: after
    :func:`to_plain` (``r(n + m) + bias``); ``dense``: after :func:`to_dense` (``n m + bias``). Parameters outside
    the Linear/Conv2d-like layers (BatchNorm, …) are in all three.
    """

    lowrank: int
    plain: int
    dense: int


def parameter_counts(model: nn.Module) -> ParameterCounts:
    """The :class:`ParameterCounts` of ``model``, from its :func:`~robustlr.lowrank.compression_report`."""
    _check_model(model)
    report = compression_report(model)
    plain = sum(row.params - (row.rank ** 2 if row.kind == "condlr" else 0) for row in report.layers)
    other = report.other_params
    return ParameterCounts(report.params + other, plain + other, report.dense_params + other)
