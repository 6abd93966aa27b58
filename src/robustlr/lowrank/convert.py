"""Conversion of dense models to low-rank layers, and compression accounting.

As in CondLR (Savostianova et al., NeurIPS 2023, arXiv 2306.01485), every Linear and Conv2d is replaced by
its ``U S Vᵀ`` factorisation (truncated SVD of the flattened weight), and the last one (the classifier) is
kept at full rank but still factorised, so its core is conditioned too. A rank fraction removes *rank*, not
parameters: a full ``r × r`` core and two bases cost ``r(n + m) + r²``, which can exceed ``n m`` for
fractions above about 0.4 on square weights. :func:`compression_report` therefore reports both reductions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlr.lowrank.factorized import FactorizedConv2d, FactorizedLinear
from robustlr.lowrank.geometry import Conv2dGeometry
from robustlr.lowrank.layers import (
    FactoredLayer,
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    resolve_rank,
)

__all__ = ["METHODS", "CompressionReport", "LayerCompression", "compression_report", "to_lowrank"]

#: Factorisations available to :func:`to_lowrank`: layer classes for (Linear, Conv2d).
METHODS: dict[str, tuple[type[FactoredLayer], type[FactoredLayer]]] = {
    "condlr": (LowRankLinear, LowRankConv2d),
    "vanilla": (FactorizedLinear, FactorizedConv2d),
}

RankSpec = int | float


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    """``(n, m)`` of a factored layer or of a dense weight flattened along its first dimension."""
    if isinstance(module, FactoredLayer):
        return module.matrix_shape
    return module.weight.shape[0], module.weight[0].numel()


def _dense_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose type is exactly nn.Linear or nn.Conv2d, in registration order.

    Subclasses are skipped on purpose: they may override ``forward`` (e.g. the ``out_proj`` of
    ``nn.MultiheadAttention`` is a Linear subclass whose weight is used directly by its parent).
    """
    return [(name, module) for name, module in model.named_modules() if type(module) in (nn.Linear, nn.Conv2d)]


def _plan(
    layers: list[tuple[str, nn.Module]],
    module_names: set[str],
    rank: RankSpec | Mapping[str, RankSpec],
    exclude: Iterable[str],
    keep_last_full: bool,
) -> dict[str, RankSpec]:
    """Rank specification of every layer to convert, keyed by module name (validated)."""
    names = [name for name, _ in layers]
    excluded = set(exclude)
    unknown = sorted(excluded - module_names)
    if unknown:
        raise ValueError(f"exclude names modules that do not exist: {unknown}; Linear/Conv2d modules: {names}")
    if isinstance(rank, Mapping):
        bad = sorted(set(rank) - set(names))
        if bad:
            raise ValueError(f"rank names modules that are not nn.Linear/nn.Conv2d: {bad}; valid names: {names}")
    last = names[-1]
    plan: dict[str, RankSpec] = {}
    for name in names:
        if any(name == prefix or name.startswith(prefix + ".") for prefix in excluded):
            if isinstance(rank, Mapping) and name in rank:
                raise ValueError(f"module {name!r} is both excluded and given a rank in the rank dict")
            continue
        if isinstance(rank, Mapping) and name in rank:
            plan[name] = rank[name]
        elif keep_last_full and name == last:
            plan[name] = 1.0
        elif not isinstance(rank, Mapping):
            plan[name] = rank
    return plan


def to_lowrank(
    model: nn.Module,
    rank: RankSpec | Mapping[str, RankSpec],
    exclude: Iterable[str] = (),
    keep_last_full: bool = True,
    method: str = "condlr",
    max_rank: RankSpec | None = None,
) -> nn.Module:
    """Replace the model's nn.Linear / nn.Conv2d modules by low-rank layers built with ``from_dense``.

    **In place**: the modules are swapped inside ``model``, which is returned (if ``model`` itself is a Linear
    or Conv2d, the new layer is returned instead). Every check and every factorisation happens before the first
    swap, so an error leaves ``model`` as it was. A module used in several places (tied) becomes one low-rank
    module used in the same places.

    Args:
        model: any module; Linear/Conv2d modules are found at any depth (exact types, not subclasses).
        rank: an int, a fraction in ``(0, 1]`` of ``min(n, m)`` (``r = ceil(f·min(n, m))``), or a dict
            ``{module_name: int | fraction}``. With a dict, layers it does not name stay dense (apart from
            the last layer when ``keep_last_full``); a name that is not a Linear/Conv2d module is an error.
        exclude: module names to leave dense; a container's name excludes everything inside it.
        keep_last_full: convert the last Linear/Conv2d (the classifier, in registration order) at full
            rank, still factorised, as the paper does. An explicit dict entry for it takes precedence.
        method: ``"condlr"`` (``U S Vᵀ`` layers for :class:`~robustlr.lowrank.optim.CondLR`) or
            ``"vanilla"`` (two free factors ``A Bᵀ``, trained by plain SGD).
        max_rank: capacity of every ``"condlr"`` layer for rank-adaptive training (int or fraction, raised
            to at least the layer's rank); ``None`` means capacity = rank.

    Ranks are numbers of any kind (``int``, ``np.int64``, ``float``, ``np.float32`` ...; not bool).

    Raises:
        ValueError: naming the layer, for a rank that does not fit it, a NaN or infinite weight, or a weight
            shared with another module (parameter tying, which the conversion would break); and for an unknown
            method, module name in ``rank`` / ``exclude``, or a model without Linear/Conv2d modules.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}; got {method!r}")
    if max_rank is not None and method != "condlr":
        raise ValueError(f"max_rank is only used with method='condlr'; got max_rank={max_rank!r}")
    layers = _dense_layers(model)
    if not layers:
        raise ValueError("model contains no nn.Linear or nn.Conv2d module to convert")
    module_names = {name for name, _ in model.named_modules()}
    plan = _plan(layers, module_names, rank, exclude, keep_last_full)
    chosen = [(name, module) for name, module in layers if name in plan]
    _check_convertible(model, chosen)
    linear_cls, conv_cls = METHODS[method]
    replacements: dict[int, nn.Module] = {}
    for name, module in chosen:
        layer_cls = linear_cls if isinstance(module, nn.Linear) else conv_cls
        try:
            kwargs: dict[str, Any] = {}
            if max_rank is not None:
                n, m = _matrix_shape(module)
                kwargs["max_rank"] = max(resolve_rank(plan[name], n, m), resolve_rank(max_rank, n, m, "max_rank"))
            replacements[id(module)] = layer_cls.from_dense(module, plan[name], **kwargs)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from error
    if "" in plan:
        return replacements[id(model)]
    _swap(model, replacements)
    return model


def _check_convertible(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    """Refuse, before any layer is converted, a layer with a NaN or infinite weight and a weight shared with
    another module (converting would untie it). One fused finiteness check for all layers."""
    flags = torch.stack([torch.isfinite(module.weight).all().to(chosen[0][1].weight.device) for _, module in chosen])
    if not bool(flags.all()):
        name, module = chosen[int((~flags).nonzero()[0, 0])]
        weight = module.weight
        raise ValueError(
            f"layer {name!r}: its weight is not finite ({int(torch.isnan(weight).sum())} NaN and "
            f"{int(torch.isinf(weight).sum())} infinite entries of {weight.numel()}), so it has no SVD to truncate; "
            "no layer was converted"
        )
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(name)
    for name, module in chosen:
        owners = holders[id(module.weight)]
        if len(owners) > 1:
            raise ValueError(
                f"layer {name!r} shares its weight with {[owner for owner in owners if owner != name]}; converting "
                "it would untie them; allowed: share the module itself (it is converted once and stays shared), "
                "or exclude these modules"
            )


def _swap(model: nn.Module, replacements: dict[int, nn.Module]) -> None:
    """Put ``replacements[id(child)]`` in place of every reference to ``child`` anywhere in ``model``, so a module
    used in several places (weight tying) is replaced by one new module used in the same places."""
    parents = {id(module): module for module in model.modules()}.values()
    for parent in parents:
        for key, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]


_COLUMNS = (
    "name", "kind", "shape", "rank", "full_rank", "rank_reduction", "dense_params", "params",
    "param_reduction", "dense_macs", "macs",
)


@dataclass(frozen=True)
class LayerCompression:
    """Compression figures of one Linear/Conv2d-like layer with flattened weight ``n × m``.

    ``params`` counts the stored weights at the current rank (``r(n + m) + r² + bias`` for ``U S Vᵀ``,
    ``r(n + m) + bias`` for ``A Bᵀ``, ``n m + bias`` for dense; unused capacity of a rank-adaptive layer is
    not counted). ``macs``/``dense_macs`` are multiply-adds of one forward pass on one sample (None when a
    convolution's output size is unknown: pass ``input_shape`` to :func:`compression_report`).
    """

    name: str
    kind: str
    shape: tuple[int, int]
    rank: int
    full_rank: int
    dense_params: int
    params: int
    dense_macs: int | None
    macs: int | None

    @property
    def rank_reduction(self) -> float:
        """``1 − r / min(n, m)``."""
        return 1.0 - self.rank / self.full_rank

    @property
    def param_reduction(self) -> float:
        """``1 − params / dense_params`` (negative when the factorisation is larger than the dense weight)."""
        return 1.0 - self.params / self.dense_params

    def to_row(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _COLUMNS}


@dataclass(frozen=True)
class CompressionReport:
    """Per-layer :class:`LayerCompression` rows and totals; ``other_params`` are the model's parameters
    outside the reported layers (BatchNorm, embeddings, ...), identical in the dense and low-rank models."""

    layers: list[LayerCompression]
    other_params: int = 0

    @property
    def rank_reduction(self) -> float:
        """``1 − Σ r / Σ min(n, m)`` over the layers."""
        return 1.0 - self.rank / self.full_rank

    @property
    def dense_params(self) -> int:
        return sum(row.dense_params for row in self.layers)

    @property
    def params(self) -> int:
        return sum(row.params for row in self.layers)

    @property
    def param_reduction(self) -> float:
        """Over the reported layers: ``1 − Σ params / Σ dense_params``."""
        return 1.0 - self.params / self.dense_params

    @property
    def model_param_reduction(self) -> float:
        """Over the whole model, other parameters included."""
        return 1.0 - (self.params + self.other_params) / (self.dense_params + self.other_params)

    @property
    def dense_macs(self) -> int | None:
        values = [row.dense_macs for row in self.layers]
        return None if None in values else sum(values)  # type: ignore[arg-type]

    @property
    def macs(self) -> int | None:
        values = [row.macs for row in self.layers]
        return None if None in values else sum(values)  # type: ignore[arg-type]

    @property
    def rank(self) -> int:
        return sum(row.rank for row in self.layers)

    @property
    def full_rank(self) -> int:
        return sum(row.full_rank for row in self.layers)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per layer, then a ``"total"`` row (its rank and full rank are sums over the layers)."""
        total = {"name": "total", "kind": "", "shape": None} | {key: getattr(self, key) for key in _COLUMNS[3:]}
        return [row.to_row() for row in self.layers] + [total]

    def to_markdown(self) -> str:
        """A Markdown table of :meth:`to_rows` (reductions in percent)."""

        def cell(key: str, value: Any) -> str:
            if value is None:
                return "–"
            if key.endswith("reduction"):
                return f"{100 * value:.1f} %"
            if key == "shape":
                return f"{value[0]}×{value[1]}"
            return str(value)

        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for row in self.to_rows():
            lines.append("| " + " | ".join(cell(key, row[key]) for key in _COLUMNS) + " |")
        return "\n".join(lines)


def _output_positions(
    model: nn.Module, layers: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]
) -> dict[str, int]:
    """Number of output vectors each layer produces for one sample, measured with forward hooks."""
    positions = dict.fromkeys((name for name, _ in layers), 0)

    def counter(name: str, rows: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            positions[name] += output.numel() // rows

        return hook

    handles = [module.register_forward_hook(counter(name, _matrix_shape(module)[0])) for name, module in layers]
    reference = next(model.parameters())
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=reference.device, dtype=reference.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return positions


def compression_report(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> CompressionReport:
    """Compression of every Linear/Conv2d-like layer of ``model`` (dense, ``U S Vᵀ`` or ``A Bᵀ``).

    Args:
        model: the (converted) model.
        input_shape: shape of one input sample without the batch dimension, e.g. ``(3, 32, 32)``. When given,
            one forward pass on zeros measures each layer's output size, which convolutions need for their
            multiply-add counts; without it linear layers count one output vector and conv MACs are None.
    """
    layers = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, (FactoredLayer, nn.Linear, nn.Conv2d))
    ]
    positions = _output_positions(model, layers, input_shape) if input_shape is not None else {}
    counted: set[int] = set()
    rows = []
    for name, module in layers:
        counted.update(id(p) for p in module.parameters())
        bias = 0 if module.bias is None else module.bias.numel()
        n, m = _matrix_shape(module)
        if isinstance(module, FactoredLayer):
            rank = module.rank
            kind = "condlr" if isinstance(module, LowRankLayer) else "vanilla"
            left, core, right = module.factors()
            params = left.numel() + right.numel() + (0 if core is None else core.numel()) + bias
        else:
            rank, kind, params = min(n, m), "dense", n * m + bias
        count = positions.get(name, None if isinstance(module, (nn.Conv2d, Conv2dGeometry)) else 1)
        if count is None:
            dense_macs = macs = None
        else:
            dense_macs = count * n * m
            macs = module.forward_macs(count) if isinstance(module, FactoredLayer) else dense_macs
        rows.append(LayerCompression(name, kind, (n, m), rank, min(n, m), n * m + bias, params, dense_macs, macs))
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return CompressionReport(rows, other)
