"""Figures as PNG files, drawn with matplotlib's Agg canvas (no pyplot state, no display needed).

* :func:`plot_robust_accuracy` — robust accuracy vs ε, one line per attack (LoRa-PGD at several ranks
  appears as several attacks, e.g. ``lora-pgd r=3``), the per-ε worst case of each norm, the clean
  accuracy as reference;
* :func:`plot_spectrum_shift` — the LoRa-PGD paper's bar chart of the normalised relative shift ``p_j`` of
  the singular values over the index ``j``;
* :func:`plot_energy_curves` — the energy fraction ``E_r`` of the top ``r`` singular values vs ``r``;
* :func:`plot_lines` — any family of named curves ``y(x)`` (e.g. robust accuracy vs ε per trained model);
* :func:`plot_bars` — grouped bars, one group per category and one bar per series (e.g. κ(S) per layer and model).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..evaluation.specs import GRID
from ..files import atomic_write_bytes

if TYPE_CHECKING:
    from ..evaluation.result import EvaluationResult

__all__ = ["plot_robust_accuracy", "plot_spectrum_shift", "plot_energy_curves", "plot_lines", "plot_bars"]

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def plot_robust_accuracy(
    result: EvaluationResult, out_path: str | os.PathLike, title: str = "Robust accuracy vs ε"
) -> Path:
    """Robust accuracy vs ε of every attack of ``result`` and the worst case, with the clean accuracy.

    ``at_eps`` attacks are lines over their grid; ready attacks with a budget are single markers; attacks
    without a budget are not drawn (they have no ε).  The worst case is one dashed line per norm (L2 and L∞
    budgets are never joined).  Returns the PNG's path.
    """
    fig, ax = _figure()
    ax.axhline(result.clean_accuracy, color="grey", linestyle=":", label=f"clean ({result.clean_accuracy:.3g})")
    for name in dict.fromkeys(r.attack for r in result.attacks):
        points = sorted((r.eps, r.robust_accuracy) for r in result.attacks if r.attack == name and r.eps is not None)
        if not points:
            continue
        grid = any(r.kind == GRID for r in result.attacks if r.attack == name)
        eps, acc = zip(*points)
        ax.plot(eps, acc, marker="o", linestyle="-" if grid else "none", label=name)
    norms = list(dict.fromkeys(w.norm for w in result.worst_case))
    for norm, style in zip(norms, ["--", "-.", ":"]):
        cases = [w for w in result.worst_case if w.norm == norm]
        label = "worst case" if len(norms) == 1 else f"worst case ({norm or 'unknown norm'})"
        ax.plot([w.eps for w in cases], [w.robust_accuracy for w in cases], color="black", linestyle=style,
                marker="x", label=label)
    ax.set(xlabel="ε", ylabel="accuracy", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_path)


def plot_spectrum_shift(p: ArrayLike, out_path: str | os.PathLike, title: str) -> Path:
    """Bar chart of the normalised relative singular-value shift ``p_j`` over the index ``j = 1, 2, …``.

    ``p``: 1-D (``relative_spectrum_shift`` of ``robustlr.analysis.spectrum``); NaN marks an index where the
    shift is undefined (σ_j = 0 in every clean image) and is drawn as a grey tick, not as a bar.
    Returns the PNG's path.
    """
    values = _vector(p, "p", allow_nan=True)
    fig, ax = _figure()
    index = np.arange(1, values.size + 1)
    undefined = np.isnan(values)
    ax.bar(index[~undefined], values[~undefined], color="tab:blue")
    if undefined.any():
        ax.plot(index[undefined], np.zeros(int(undefined.sum())), "|", color="grey", markersize=12,
                label="undefined (σ_j = 0 in every image)")
        ax.legend(fontsize="small")
    ax.set(xlabel="singular value index j", ylabel="normalised relative shift $p_j$", title=title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)


def plot_energy_curves(
    curves: Mapping[str, ArrayLike], out_path: str | os.PathLike, title: str = "Energy in the top r singular values"
) -> Path:
    """Energy fraction ``E_r`` vs ``r = 1, 2, …``, one line per attack (``curves``: name -> 1-D values over r).

    Returns the PNG's path.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty mapping name -> energy fractions over r, got {curves!r}")
    lines = {}
    for name, curve in curves.items():
        values = _vector(curve, f"curves[{name!r}]")
        lines[name] = (np.arange(1, values.size + 1), values)
    return plot_lines(lines, out_path, xlabel="rank r", ylabel="energy fraction $E_r$", title=title)


def plot_lines(
    lines: Mapping[str, tuple[ArrayLike, ArrayLike]], out_path: str | os.PathLike, *, xlabel: str, ylabel: str,
    title: str, unit_interval: bool = True,
) -> Path:
    """One line with markers per ``name -> (x, y)``; ``unit_interval`` fixes the y axis to [0, 1]."""
    if not isinstance(lines, Mapping) or not lines:
        raise ValueError(f"lines must be a non-empty mapping name -> (x, y), got {lines!r}")
    fig, ax = _figure()
    for name, (xs, ys) in lines.items():
        x, y = _vector(xs, f"lines[{name!r}] x"), _vector(ys, f"lines[{name!r}] y")
        if x.size != y.size:
            raise ValueError(f"lines[{name!r}] must have x and y of equal length, got {x.size} and {y.size}")
        ax.plot(x, y, marker="o", label=str(name))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if unit_interval:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_path)


def plot_bars(
    series: Mapping[str, Mapping[str, float]], out_path: str | os.PathLike, *, ylabel: str, title: str,
    log: bool = False,
) -> Path:
    """Grouped bar chart: ``series`` maps a series name (one colour) to ``{category: value}``; the categories
    (x axis) are the union of all series' keys in first-seen order, a missing value leaves a gap.  ``log``
    draws the y axis logarithmically (every value must then be > 0).  Returns the PNG's path."""
    if not isinstance(series, Mapping) or not series or not all(isinstance(v, Mapping) and v for v in series.values()):
        raise ValueError(f"series must be a non-empty mapping name -> non-empty {{category: value}}, got {series!r}")
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    width = 0.8 / len(series)
    fig, ax = _figure()
    for i, (name, values) in enumerate(series.items()):
        heights = _vector([values.get(c, math.nan) for c in categories], f"series[{name!r}]", allow_nan=True)
        if log and bool((heights[~np.isnan(heights)] <= 0).any()):
            raise ValueError(f"series[{name!r}] must be > 0 with log=True, got {values!r}")
        ax.bar(np.arange(len(categories)) + (i - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width,
               label=str(name))
    ax.set_xticks(np.arange(len(categories)), [str(c) for c in categories], rotation=20 if len(categories) > 4 else 0)
    ax.set(ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_path)


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, out_path: str | os.PathLike) -> Path:
    path = Path(out_path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"out_path must name a .png file, got {str(out_path)!r}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _vector(values: ArrayLike, name: str, allow_nan: bool = False) -> np.ndarray:
    """``values`` as a finite (or, with ``allow_nan``, NaN = undefined) non-empty 1-D float array,
    else ``ValueError`` naming ``name``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of finite numbers, got {values!r}") from err
    ok = np.isfinite(array) | (np.isnan(array) if allow_nan else False)
    if array.ndim != 1 or array.size == 0 or not ok.all() or (allow_nan and np.isnan(array).all()):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers, got shape {array.shape}: {array!r}")
    return array
