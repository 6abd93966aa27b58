"""Ranks for compressing a *trained* network: which layers to factorise as ``U S Vᵀ``, and at which rank.

The candidates are the layers :func:`~robustlr.lowrank.to_lowrank` converts: every module of exact type
``nn.Linear`` or ``nn.Conv2d`` (a grouped convolution has no ``U S Vᵀ`` form and always stays dense), with its
weight flattened to ``W ∈ R^{n×m}``, ``n`` the outputs and ``m = in·kh·kw``, and singular values
``σ₁ ≥ σ₂ ≥ …`` (computed in float64). Three rules choose the ranks (:func:`choose_ranks`):

=================  ============================================================================================
rule               rank of each layer
=================  ============================================================================================
``rank=r``         an int, or a fraction of ``min(n, m)`` rounded up, as ``robustlr train --rank``;
                   ``{name: r}``: the named layers at their ranks, every other layer dense
``energy=e``       per layer the smallest ``r`` with ``Σ_{i≤r} σᵢ² ≥ e · Σᵢ σᵢ²`` (``e ∈ (0, 1]``; the comparison
                   allows 1e-12 of rounding)
``params=p``       ranks such that the network stores at most ``p · D`` weights (below), spread by energy:
                   every layer starts at rank 1, then ranks rise in the order of the energy fraction
                   ``c(r) = Σ_{i≤r} σᵢ²/Σσ²`` each layer has reached (a common energy threshold sweeping up; ties
                   in layer order), each rise taken if it still fits the budget; a rise that does not fit stops
                   that layer and the others go on
=================  ============================================================================================

As in training (and :func:`~robustlr.lowrank.to_lowrank`'s ``keep_last_full``), the last layer, the
classifier, stays at full rank unless a rank dict names it; ``keep_last_full=False`` chooses its rank like any
other layer's.

**What is counted.** ``D`` is the number of entries of the weights of all candidate layers (``n·m`` each,
grouped convolutions and the classifier included); biases and every other parameter (BatchNorm, embeddings) are
left out, as they are the same in the dense and the low-rank network. A layer factorised at rank ``r`` stores
``r(n + m) + r²`` weights (``U``, ``V`` and the full ``r × r`` core ``S``, as
:class:`~robustlr.lowrank.LowRankLinear` stores them); a dense layer ``n·m``.

**Layers kept dense.** A layer whose factorisation would store at least as many weights as the dense layer
(``r(n + m) + r² ≥ n·m``; always so at full rank, hence for the classifier) stays dense, with the reason in its
row; ``force=True`` factorises it anyway (noted too). With ``params`` the budget is *maximal*: no layer's rank
can be raised by one (or the layer made dense) without exceeding it, so what is left over is less than the
smallest such step. A budget below rank 1 in every layer the rule chooses is refused, naming that smallest
feasible fraction.

Keeping the largest singular values is the best rank-``r`` approximation in the Frobenius norm
(Eckart–Young–Mirsky), whose squared relative error is the energy left out, ``1 − Σ_{i≤r} σᵢ²/Σσ²``; CondLR
(Savostianova et al., NeurIPS 2023, arXiv 2306.01485) then fine-tunes the factors with ``κ(S) ≤ 1 + τ``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from robustlr.checks import is_real
from robustlr.lowrank.convert import _dense_layers
from robustlr.lowrank.layers import resolve_rank

__all__ = ["ENERGY_TOLERANCE", "LayerChoice", "RankChoice", "choose_ranks", "energy_rank", "stored_weights"]

ENERGY_TOLERANCE = 1e-12
"""Rounding allowed when an energy fraction is compared with the requested one."""


def stored_weights(n: int, m: int, rank: int) -> int:
    """Weights a ``U S Vᵀ`` factorisation of an ``n × m`` matrix stores at ``rank``: ``r(n + m) + r²``."""
    return rank * (n + m) + rank * rank


@dataclass(frozen=True)
class LayerChoice:
    """The choice for one layer: ``rank`` ``None`` keeps it dense (``note`` says why); ``energy`` is the kept
    fraction ``Σ_{i≤r} σᵢ² / Σσ²`` (1 for a dense layer)."""

    name: str
    shape: tuple[int, int]
    rank: int | None
    energy: float
    note: str = ""

    @property
    def full_rank(self) -> int:
        return min(self.shape)

    @property
    def dense_weights(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def stored(self) -> int:
        """Weights this layer stores: ``r(n + m) + r²`` factorised, ``n·m`` dense."""
        return self.dense_weights if self.rank is None else stored_weights(*self.shape, self.rank)

    def to_row(self) -> dict[str, Any]:
        return {"layer": self.name, "shape": f"{self.shape[0]}x{self.shape[1]}", "rank": self.rank,
                "full_rank": self.full_rank, "energy": self.energy, "dense_weights": self.dense_weights,
                "stored_weights": self.stored, "note": self.note}


@dataclass(frozen=True)
class RankChoice:
    """Per-layer choices (registration order) and the rule that made them (``"rank 0.2"``, ``"energy 0.9"``,
    ``"params 0.3"``)."""

    layers: tuple[LayerChoice, ...]
    rule: str

    @property
    def ranks(self) -> dict[str, int]:
        """``{name: rank}`` of the factorised layers: the ``rank`` of ``to_lowrank(..., keep_last_full=False)``."""
        return {layer.name: layer.rank for layer in self.layers if layer.rank is not None}

    @property
    def dense(self) -> list[str]:
        """Names of the layers kept dense."""
        return [layer.name for layer in self.layers if layer.rank is None]

    @property
    def dense_weights(self) -> int:
        """``D``: the weights of the dense network's candidate layers."""
        return sum(layer.dense_weights for layer in self.layers)

    @property
    def stored(self) -> int:
        return sum(layer.stored for layer in self.layers)

    @property
    def fraction(self) -> float:
        """Stored weights over ``D``."""
        return self.stored / self.dense_weights

    def to_rows(self) -> list[dict[str, Any]]:
        return [layer.to_row() for layer in self.layers]


@dataclass(frozen=True)
class _Spectrum:
    """A candidate layer: flattened shape, cumulative energy fractions ``c[r - 1] = Σ_{i≤r} σᵢ²/Σσ²`` (all ones
    for a zero weight), and whether it can be factorised (not a grouped convolution)."""

    name: str
    shape: tuple[int, int]
    cumulative: tuple[float, ...]
    factorisable: bool

    @property
    def full_rank(self) -> int:
        return min(self.shape)

    def energy(self, rank: int | None) -> float:
        return 1.0 if rank is None else self.cumulative[rank - 1]


def _spectra(model: nn.Module) -> list[_Spectrum]:
    layers = _dense_layers(model)
    if not layers:
        raise ValueError("model contains no nn.Linear or nn.Conv2d module whose rank could be chosen")
    out = []
    for name, module in layers:
        weight = module.weight.detach()
        matrix = weight.reshape(weight.shape[0], -1)
        factorisable = getattr(module, "groups", 1) == 1
        try:
            cumulative = _cumulative(matrix) if factorisable else ()
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
        out.append(_Spectrum(name, (matrix.shape[0], matrix.shape[1]), cumulative, factorisable))
    return out


def _cumulative(matrix: Tensor) -> tuple[float, ...]:
    energies = torch.linalg.svdvals(matrix.to(torch.float64)).square()
    total = energies.sum()
    if not torch.isfinite(total):
        raise ValueError("its weight is not finite, so it has no singular values to choose a rank from")
    if total == 0:
        return (1.0,) * energies.numel()
    return tuple((energies.cumsum(0) / total).clamp(max=1.0).tolist())


def energy_rank(cumulative: tuple[float, ...], energy: float) -> int:
    """The smallest ``r`` with ``cumulative[r - 1] ≥ energy`` (up to :data:`ENERGY_TOLERANCE`)."""
    for rank, kept in enumerate(cumulative, start=1):
        if kept >= energy - ENERGY_TOLERANCE:
            return rank
    return len(cumulative)


def _stays_dense(layer: _Spectrum, rank: int, force: bool) -> bool:
    """Whether the dense-keep rule keeps ``layer`` dense at ``rank``: ``r(n + m) + r² ≥ n·m`` and not forced."""
    return not force and stored_weights(*layer.shape, rank) >= layer.shape[0] * layer.shape[1]


def _decide(layer: _Spectrum, rank: int, force: bool) -> LayerChoice:
    """Factorise ``layer`` at ``rank`` unless the dense-keep rule keeps it dense (the note says which)."""
    n, m = layer.shape
    stored = stored_weights(n, m, rank)
    if stored < n * m:
        return LayerChoice(layer.name, layer.shape, rank, layer.energy(rank))
    detail = f"rank {rank} stores r(n+m)+r² = {stored} >= n·m = {n * m}"
    if force:
        return LayerChoice(layer.name, layer.shape, rank, layer.energy(rank), f"forced: {detail}")
    return LayerChoice(layer.name, layer.shape, None, 1.0, f"kept dense: {detail}")


def _fixed_choice(layer: _Spectrum, index: int, count: int, rank: object, keep_last_full: bool,
                  force: bool) -> LayerChoice | None:
    """The choice every rule makes alike for ``layer`` (the ``index``-th of ``count``), or ``None`` if the rule
    picks its rank: grouped convolutions and (with a rank dict) unnamed layers stay dense, and with
    ``keep_last_full`` the classifier is at full rank (so dense unless forced) when no dict entry names it."""
    named = isinstance(rank, Mapping) and layer.name in rank
    if not layer.factorisable:
        return LayerChoice(layer.name, layer.shape, None, 1.0, "kept dense: grouped convolution (no U S Vᵀ form)")
    if keep_last_full and index == count - 1 and not named:
        choice = _decide(layer, layer.full_rank, force)
        return replace(choice, note=("forced: " if force else "kept dense: ") + "the classifier stays full rank "
                                    "(keep_last_full)")
    if isinstance(rank, Mapping) and not named:
        return LayerChoice(layer.name, layer.shape, None, 1.0, "kept dense: not named in rank")
    return None


def _given_rank(layer: _Spectrum, rank: int | float | Mapping[str, int | float]) -> int:
    spec = rank[layer.name] if isinstance(rank, Mapping) else rank
    try:
        return resolve_rank(spec, *layer.shape)
    except ValueError as error:
        raise ValueError(f"layer {layer.name!r}: {error}") from None


def _budget_ranks(layers: list[_Spectrum], free: list[int], fixed_cost: int, params: float,
                  force: bool) -> dict[int, int]:
    """The ``params`` rule for the layers at positions ``free`` (module docstring): all at rank 1, then rises in
    order of the energy reached, each taken if it still fits; ``fixed_cost`` is what the other layers store."""
    total = sum(layer.shape[0] * layer.shape[1] for layer in layers)
    budget = params * total

    def cost(index: int, rank: int) -> int:
        layer = layers[index]
        dense = layer.shape[0] * layer.shape[1]
        return dense if _stays_dense(layer, rank, force) else stored_weights(*layer.shape, rank)

    ranks = dict.fromkeys(free, 1)
    used = fixed_cost + sum(cost(index, 1) for index in free)
    if used > budget:
        smallest = math.ceil(used / total * 1e6) / 1e6
        raise ValueError(f"params = {params:g} is below the smallest feasible budget: rank 1 in every layer it "
                         f"chooses (the others as they are kept) stores {used} of the {total} dense weights "
                         f"({smallest:g}); allowed: params in [{smallest:g}, 1]")

    def can_rise(index: int) -> bool:
        return ranks[index] < layers[index].full_rank and not _stays_dense(layers[index], ranks[index], force)

    # the threshold sweeps up: the layer whose energy reached (c[r - 1] at rank r) is lowest rises first
    heap = [(layers[index].cumulative[0], index) for index in free if can_rise(index)]
    heapq.heapify(heap)
    while heap:
        _, index = heapq.heappop(heap)
        rank = ranks[index]
        step = cost(index, rank + 1) - cost(index, rank)
        if used + step > budget:
            continue  # this layer stops here; the others go on
        used += step
        ranks[index] = rank + 1
        if can_rise(index):
            heapq.heappush(heap, (layers[index].cumulative[rank], index))
    return ranks


def _fraction(name: str, value: object, meaning: str) -> float:
    if not is_real(value) or not math.isfinite(value) or not 0 < value <= 1:  # type: ignore[arg-type,operator]
        raise ValueError(f"{name} must be a fraction in (0, 1] ({meaning}); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_rank_names(layers: list[_Spectrum], rank: Mapping[str, int | float]) -> None:
    names = [layer.name for layer in layers]
    unknown = sorted(set(rank) - set(names))
    if unknown:
        raise ValueError(f"rank names modules that are not nn.Linear/nn.Conv2d layers: {unknown}; valid names: {names}")
    grouped = [layer.name for layer in layers if layer.name in rank and not layer.factorisable]
    if grouped:
        raise ValueError(f"rank names grouped convolutions {grouped}, which have no U S Vᵀ form; allowed: leave them "
                         "out of the rank dict")


def choose_ranks(
    model: nn.Module,
    rank: int | float | Mapping[str, int | float] | None = None,
    *,
    energy: float | None = None,
    params: float | None = None,
    keep_last_full: bool = True,
    force: bool = False,
) -> RankChoice:
    """Choose the rank of every Linear/Conv2d of a trained ``model`` by exactly one of ``rank``, ``energy`` or
    ``params`` (module table). ``model`` is only read.

    Args:
        keep_last_full: keep the last Linear/Conv2d (the classifier) at full rank, as ``to_lowrank`` and training
            do; full rank stores more than the dense weight, so it stays dense unless ``force``. A rank dict
            entry for it takes precedence. ``False``: the classifier is chosen like any other layer.
        force: factorise also the layers whose factorisation stores at least as many weights as the dense
            layer (noted in their rows).

    Raises:
        ValueError: for none or several of ``rank`` / ``energy`` / ``params``; ``energy`` or ``params`` outside
            ``(0, 1]``; a ``params`` budget below rank 1 everywhere (naming the smallest feasible one); a rank
            that does not fit a layer or a rank dict naming a module that is not a candidate layer (or a grouped
            convolution); a model without Linear/Conv2d layers or with a non-finite weight.
    """
    given = [key for key, value in (("rank", rank), ("energy", energy), ("params", params)) if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of rank (an int, a fraction in (0, 1] or {layer: rank}), energy (a "
                         f"fraction in (0, 1]) or params (a fraction in (0, 1]); got {given or 'none'}")
    for name, flag in (("keep_last_full", keep_last_full), ("force", force)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False; got {flag!r}")
    if energy is not None:
        energy = _fraction("energy", energy, "of each layer's sum of squared singular values")
    if params is not None:
        params = _fraction("params", params, "of the dense weights of the Linear/Conv2d layers")
    layers = _spectra(model)
    if isinstance(rank, Mapping):
        _check_rank_names(layers, rank)
    choices = [_fixed_choice(layer, index, len(layers), rank, keep_last_full, force)
               for index, layer in enumerate(layers)]
    free = [index for index, choice in enumerate(choices) if choice is None]
    if rank is not None:
        ranks, rule = {index: _given_rank(layers[index], rank) for index in free}, f"rank {rank}"
    elif energy is not None:
        ranks, rule = {index: energy_rank(layers[index].cumulative, energy) for index in free}, f"energy {energy:g}"
    else:
        fixed_cost = sum(choice.stored for choice in choices if choice is not None)
        assert params is not None
        ranks, rule = _budget_ranks(layers, free, fixed_cost, params, force), f"params {params:g}"
    for index, chosen in ranks.items():
        choices[index] = _decide(layers[index], chosen, force)
    return RankChoice(tuple(choice for choice in choices if choice is not None), rule)
