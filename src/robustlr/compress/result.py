"""The before/after table of a compression and its files: ``compression.json``, ``compression.csv`` (one row per
model), ``layers.csv`` (one row per layer) and ``compression.md`` (both tables), each written atomically.

Before/after columns: ``model`` (``dense`` / ``low-rank``), ``clean_accuracy``, the robust accuracy under each
attack at each ε > 0 (``pgd-linf@0.05``) and, with several attacks, the per-sample worst case per ε
(``worst-linf@0.05``), ``kappa_max`` (the largest κ over the layers, dense ones included), ``stored_weights``
and ``weight_fraction`` (over the Linear/Conv2d weights counted by :mod:`robustlr.lowrank.rank_choice`),
``latency_ms`` (median forward pass of ``latency_batch`` images; the ratio is in ``compression.json``) and
``finetune_seconds``. Layer columns: the rank choice's (``layer``, ``shape``, ``rank``, ``full_rank``,
``energy``, ``dense_weights``, ``stored_weights``, ``note``) with ``kappa_dense`` and ``kappa_lowrank``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from robustlr.files import atomic_write_text
from robustlr.lowrank.rank_choice import RankChoice
from robustlr.report import markdown_table
from robustlr.train.metrics_log import json_ready

from .settings import CompressSettings

__all__ = ["FILES", "LAYER_COLUMNS", "CompressionResult"]

FILES = ("compression.json", "compression.csv", "layers.csv", "compression.md")

LAYER_COLUMNS = ("layer", "shape", "rank", "full_rank", "energy", "dense_weights", "stored_weights", "kappa_dense",
                 "kappa_lowrank", "note")


@dataclass
class CompressionResult:
    """What :func:`robustlr.compress.compress` produced.

    Attributes:
        settings: the run's settings (ε grid filled in).
        choice: the chosen ranks (:class:`~robustlr.lowrank.rank_choice.RankChoice`).
        dense, lowrank: :func:`~robustlr.compress.measure.evaluation_summary` of each model.
        kappa_dense, kappa_lowrank: κ of every layer of each model.
        latency: :func:`~robustlr.compress.measure.latency_ratio`'s figures.
        finetune: ``seconds`` (training epochs), ``epochs``, ``best_epoch`` (the selected checkpoint), ``select_by``
            and ``run`` (the fine-tuning run's directory).
        model: the fine-tuned low-rank model (the selected checkpoint), in eval mode.
        out: the run's directory.
    """

    settings: CompressSettings
    choice: RankChoice
    dense: dict[str, Any]
    lowrank: dict[str, Any]
    kappa_dense: dict[str, float]
    kappa_lowrank: dict[str, float]
    latency: dict[str, float]
    finetune: dict[str, Any]
    model: nn.Module
    out: Path

    @property
    def saved_fraction(self) -> float:
        """``1 − stored / D``: the share of the counted dense weights the low-rank network does not store."""
        return 1.0 - self.choice.fraction

    def columns(self) -> list[str]:
        """The before/after columns (module docstring), attacks and budgets of this run included."""
        robust = [f"{row['attack']}@{row['eps']:g}" for row in self.dense["robust"] if row["eps"] > 0]
        worst = [f"worst-{row['norm']}@{row['eps']:g}" for row in self.dense["worst_case"] if row["eps"] > 0]
        return ["model", "clean_accuracy", *robust, *(worst if len(self.settings.attacks) > 1 else []), "kappa_max",
                "stored_weights", "weight_fraction", "latency_ms", "finetune_seconds"]

    def rows(self) -> list[dict[str, Any]]:
        """One row per model (dense, then low-rank) with :meth:`columns`."""
        choice = self.choice
        models = (("dense", self.dense, self.kappa_dense, choice.dense_weights, "dense_seconds", None),
                  ("low-rank", self.lowrank, self.kappa_lowrank, choice.stored, "lowrank_seconds",
                   self.finetune["seconds"]))
        rows = []
        for name, summary, kappa, stored, latency, seconds in models:
            row: dict[str, Any] = {"model": name, "clean_accuracy": summary["clean_accuracy"]}
            row.update({f"{r['attack']}@{r['eps']:g}": r["robust_accuracy"] for r in summary["robust"] if r["eps"] > 0})
            row.update({f"worst-{r['norm']}@{r['eps']:g}": r["robust_accuracy"] for r in summary["worst_case"]
                        if r["eps"] > 0})
            row.update({"kappa_max": max(kappa.values()), "stored_weights": stored,
                        "weight_fraction": stored / choice.dense_weights, "latency_ms": 1e3 * self.latency[latency],
                        "finetune_seconds": seconds})
            rows.append(row)
        return rows

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per Linear/Conv2d layer: the rank choice with each model's κ."""
        return [{**row, "kappa_dense": self.kappa_dense.get(row["layer"]),
                 "kappa_lowrank": self.kappa_lowrank.get(row["layer"])} for row in self.choice.to_rows()]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``compression.json`` (NaN and infinities as ``null``)."""
        return json_ready({
            "settings": self.settings.to_dict(), "rule": self.choice.rule, "ranks": self.choice.ranks,
            "dense_layers": self.choice.dense, "dense_weights": self.choice.dense_weights,
            "stored_weights": self.choice.stored, "saved_fraction": self.saved_fraction, "latency": self.latency,
            "finetune": self.finetune, "dense": self.dense, "lowrank": self.lowrank, "table": self.rows(),
            "layers": self.layer_rows(),
        })

    def markdown(self) -> str:
        """``compression.md``: the before/after table, the saved fraction and latency ratio, the layer table."""
        latency = self.latency
        return (
            f"# robustlr compress: {self.choice.rule}\n\n{markdown_table(self.rows(), self.columns())}\n"
            f"Stored weights: {self.choice.stored} of {self.choice.dense_weights} "
            f"({100 * self.choice.fraction:.1f} %, {100 * self.saved_fraction:.1f} % saved). Latency ratio low-rank / "
            f"dense: {latency['ratio']:.3f} (median of {latency['repeats']} forward passes of {latency['batch']} "
            f"images each). Fine-tuning: {self.finetune['epochs']} epoch(s), {self.finetune['seconds']:.1f} s; the "
            f"selected checkpoint is epoch {self.finetune['best_epoch']} (by {self.finetune['select_by']} "
            f"validation accuracy). Robust accuracy on n = {self.lowrank['n']} test images.\n\n"
            f"## Layers\n\n{markdown_table(self.layer_rows(), LAYER_COLUMNS)}"
        )

    def write(self, out: Path) -> dict[str, Path]:
        """Write :data:`FILES` into ``out``; return ``{name: path}``."""
        texts = {
            "compression.json": json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n",
            "compression.csv": _csv(self.rows(), self.columns()),
            "layers.csv": _csv(self.layer_rows(), LAYER_COLUMNS),
            "compression.md": self.markdown(),
        }
        return {name: atomic_write_text(out / name, text) for name, text in texts.items()}


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()
