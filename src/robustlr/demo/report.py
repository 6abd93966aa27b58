"""The demo's report: ``report.md`` with tables and figures, ``demo.json`` with every number, the summary table.

Figures (PNG, next to ``report.md``): ``accuracy-<attack>.png`` (robust accuracy vs ε, one line per network),
``kappa.png`` (κ per layer and network, log scale: κ(S) of the factorised layers, κ(W) of the dense ones),
``compression.png`` (stored weights per layer and network), ``energy.png`` (energy fraction E_r of the top r
singular values of the PGD perturbations) and ``shift-<model>.png`` (the LoRa-PGD paper's normalised relative
shift p_j of the images' singular values under PGD-L2).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..attacks.projections import resolve_rank
from ..files import atomic_write_text, file_stem
from ..report import SUMMARY_COLUMNS, markdown_table, plot_bars, plot_energy_curves, plot_lines, plot_spectrum_shift
from .results import DemoResult, ModelResult
from .settings import IMAGE_SIDE, NORMS

__all__ = ["COMPARISONS", "SUMMARY", "comparison_rows", "summary_rows", "write_demo_report"]

SUMMARY = {"model": "model", "weights": "weights", "param_reduction": "saved", "kappa_max": "max κ",
           "clean": "clean acc", "train_seconds": "train s"}
"""Fixed columns of the summary table; one robust-accuracy column per attack follows (at the summary budgets)."""


def _label(result: DemoResult, attack: str) -> str:
    """Display name of an attack (LoRa-PGD with its rank fraction)."""
    return f"lora-pgd r={_lora_r(result)}" if attack == "lora-pgd" else attack


def _lora_r(result: DemoResult) -> int:
    """LoRa-PGD's rank per channel."""
    return resolve_rank(result.settings.lora_rank, IMAGE_SIDE, "lora_rank")


def _budget(result: DemoResult, attack: str) -> float:
    return result.settings.summary_l2 if attack in NORMS["l2"] else result.settings.summary_linf


def _grid(result: DemoResult, attack: str) -> tuple[float, ...]:
    return result.settings.eps_l2 if attack in NORMS["l2"] else result.settings.eps_linf


def _attacks() -> list[str]:
    return [attack for names in NORMS.values() for attack in names]


def _layers(model: ModelResult) -> list[dict[str, Any]]:
    """The per-layer rows of the model's compression report (without its ``total`` row)."""
    return [row for row in model.compression["layers"] if row["name"] != "total"]


def summary_rows(result: DemoResult) -> list[dict[str, Any]]:
    """One row per network: stored weights of its Linear/Conv layers, the fraction saved against the dense
    network, the largest κ over its layers, clean accuracy, training seconds, and the robust accuracy under every
    attack at the summary budget (``ε∞`` for FGSM/PGD-L∞, ``ε₂`` for PGD-L2/LoRa-PGD)."""
    rows = []
    for model in result.models:
        row: dict[str, Any] = {
            "model": model.name, "weights": sum(layer["params"] for layer in _layers(model)),
            "param_reduction": model.compression["param_reduction"], "kappa_max": max(model.kappa.values()),
            "clean": model.clean_accuracy, "train_seconds": model.train_seconds,
        }
        for attack in _attacks():
            row[f"{_label(result, attack)} @ {_budget(result, attack):g}"] = model.accuracy(attack, _budget(result, attack))
        rows.append(row)
    return rows


COMPARISONS = (("condlr", "low-rank"), ("condlr", "dense"), ("low-rank", "dense"))
"""Pairs ``(a, b)`` of networks whose summary rows are compared (``a − b``) in the report."""


def comparison_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``a − b`` in accuracy points (clean and every robust column) for each pair of :data:`COMPARISONS`
    whose two networks trained; positive means ``a`` is more accurate or more robust."""
    rows = {row["model"]: row for row in summary}
    columns = ["clean", *(k for k in summary[0] if k not in SUMMARY)]
    return [{"comparison": f"{a} − {b}", **{c: round(100 * (rows[a][c] - rows[b][c]), 1) for c in columns}}
            for a, b in COMPARISONS if a in rows and b in rows]


def _accuracy_figures(result: DemoResult) -> list[Path]:
    paths = []
    for attack in _attacks():
        grid = (0.0, *_grid(result, attack))
        lines = {m.name: (list(grid), [m.accuracy(attack, eps) for eps in grid]) for m in result.models}
        norm = "L2" if attack in NORMS["l2"] else "L∞"
        paths.append(plot_lines(lines, result.out / f"accuracy-{file_stem(attack)}.png", xlabel=f"ε ({norm})",
                                ylabel="test accuracy", title=f"accuracy under {_label(result, attack)}"))
    return paths


def _spectrum_rows(result: DemoResult) -> list[dict[str, Any]]:
    r = _lora_r(result)
    return [
        {"model": m.name, "attack": s.attack, "effective_rank": s.effective_rank, "stable_rank": s.stable_rank,
         "nuclear_norm": s.nuclear_norm, f"energy_top{r}": s.energy_curve[r - 1], "n": s.n}
        for m in result.models for s in m.spectrum
    ]


def _markdown(result: DemoResult, summary: list[dict[str, Any]], started: str) -> str:
    s = result.settings
    first = result.models[0].evaluations["linf"]
    eval_rows = [{"model": m.name, **row} for m in result.models for ev in m.evaluations.values() for row in ev.rows()]
    kappa_rows = [{"layer": layer, **{m.name: m.kappa.get(layer) for m in result.models}}
                  for layer in result.models[0].kappa]
    compression_rows = [
        {"layer": row["name"], "shape": "×".join(map(str, row["shape"])),
         **{f"{m.name} rank": next(x["rank"] for x in _layers(m) if x["name"] == row["name"]) for m in result.models},
         **{f"{m.name} weights": next(x["params"] for x in _layers(m) if x["name"] == row["name"]) for m in result.models}}
        for row in _layers(result.models[0])
    ]
    attacks_md = "".join(f"![accuracy under {_label(result, a)}](accuracy-{file_stem(a)}.png)\n" for a in _attacks())
    spectrum_rows = _spectrum_rows(result)
    comparisons = comparison_rows(summary)
    shifts_md = "".join(f"![relative singular-value shift, {m.name}](shift-{file_stem(m.name)}.png)\n" for m in result.models)
    return "\n".join([
        "# robustlr demo: dense, low-rank and CondLR LeNet5 on Fashion-MNIST, attacked\n",
        f"- training: {s.train_subset or 60000} Fashion-MNIST training images ({s.val_fraction:g} held out for "
        f"validation), {s.epochs} epoch(s) of SGD (lr 0.02, momentum 0.9), seed {s.seed}; low-rank and CondLR at "
        "rank fraction 0.2 of every layer, CondLR with τ = 0.1 (κ(S) ≤ 1.1) and the exact gradient scale",
        f"- attacks: {first.n} test images; FGSM and PGD-L∞ at ε∞ ∈ {list(s.eps_linf)}, PGD-L2 and LoRa-PGD "
        f"(rank r = {_lora_r(result)} per channel) at ε₂ ∈ {list(s.eps_l2)}; PGD and LoRa-PGD {s.steps} steps; each network "
        "attacked with attacks built on itself",
        f"- device: {first.device}; robustlr {__version__}, torch {torch.__version__}; started {started}\n",
        "## Summary\n",
        "Robust accuracy at the summary budgets (ε∞ for FGSM/PGD-L∞, ε₂ for PGD-L2/LoRa-PGD); `weights` counts "
        "the stored weights of the Linear/Conv layers, `saved` the fraction saved against the dense network, "
        "`max κ` the largest condition number over the layers.\n",
        markdown_table(summary, {**SUMMARY, **{k: k for k in summary[0] if k not in SUMMARY}}),
        "".join(f"\n**{name} diverged** and is left out: {message}\n" for name, message in result.failed.items()),
        "\nDifferences in accuracy points (positive: the first network is more accurate or more robust); one seed "
        "and a finite test set, so a point or two is within the noise:\n",
        markdown_table(comparisons, list(comparisons[0])) if comparisons else "",
        "\n## Robust accuracy vs ε\n",
        attacks_md,
        markdown_table(eval_rows, {"model": "model", **SUMMARY_COLUMNS}),
        "\n## Conditioning: κ per layer\n",
        "κ = σ_max/σ_min over the nonzero singular values of each layer's weight: of the core S of CondLR's U S Vᵀ "
        "(U, V orthonormal), of the product A Bᵀ of vanilla low-rank, of the flattened weight of the dense network. "
        "CondLR keeps every κ(S) ≤ 1 + τ; vanilla low-rank training lets it grow.\n",
        markdown_table(kappa_rows, {"layer": "layer", **{m.name: m.name for m in result.models}}),
        "\n![κ per layer](kappa.png)\n",
        "## Compression\n",
        "Rank and stored weights (bias included) per layer: `r(n + m) + bias` for vanilla low-rank `A Bᵀ`, "
        "`r(n + m) + r² + bias` for CondLR's `U S Vᵀ`.\n",
        markdown_table(compression_rows, list(compression_rows[0])),
        "\n![weights per layer](compression.png)\n",
        "## Spectrum of PGD perturbations\n",
        "Means over images and channels of δ = x_adv − x: effective rank, stable rank, nuclear norm, and the energy "
        "fraction of the top singular values at LoRa-PGD's rank (the LoRa-PGD paper's observation: most of a PGD "
        "perturbation's energy lies in a few singular directions).\n",
        markdown_table(spectrum_rows, list(spectrum_rows[0])),
        "\n![energy curves](energy.png)\n",
        shifts_md,
        "## Files\n",
        "- `demo.json`: every number above; `<model>/`: the training run (metrics, `last.pt`, `best.pt`), and "
        "`attacks-linf/`, `attacks-l2/` (the evaluation reports of that network).\n",
    ])


def _document(result: DemoResult, summary: list[dict[str, Any]], started: str) -> dict[str, Any]:
    return {
        "robustlr_version": __version__, "torch_version": torch.__version__, "started": started,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(result.settings).items()},
        "summary": summary,
        "failed": result.failed,
        "models": {
            m.name: {"config": m.config.to_dict(), "train_seconds": m.train_seconds, "kappa": m.kappa,
                     "compression": m.compression, "evaluations": {k: v.to_dict() for k, v in m.evaluations.items()},
                     "spectrum": [s.to_dict() for s in m.spectrum]}
            for m in result.models
        },
    }


def write_demo_report(result: DemoResult, started: str | None = None) -> list[dict[str, Any]]:
    """Write ``report.md``, its figures and ``demo.json`` into ``result.out``; return the summary rows."""
    started = started or datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = result.out
    summary = summary_rows(result)
    _accuracy_figures(result)
    plot_bars({m.name: m.kappa for m in result.models}, out / "kappa.png", ylabel="κ (log scale)",
              title="condition number per layer", log=True)
    plot_bars({m.name: {row["name"]: row["params"] for row in _layers(m)} for m in result.models},
              out / "compression.png", ylabel="stored weights (log scale)", title="weights per layer", log=True)
    plot_energy_curves({f"{m.name}, {s.attack}": s.energy_curve for m in result.models for s in m.spectrum},
                       out / "energy.png", title="energy of PGD perturbations in the top r singular values")
    for m in result.models:
        plot_spectrum_shift(m.spectrum[0].shift_fraction, out / f"shift-{file_stem(m.name)}.png",
                            title=f"{m.name}: relative singular-value shift under {m.spectrum[0].attack}")
    atomic_write_text(out / "demo.json", json.dumps(_document(result, summary, started), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", _markdown(result, summary, started))
    return summary
