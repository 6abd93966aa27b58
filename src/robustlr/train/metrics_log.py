"""Per-epoch metrics: the model's conditioning diagnostics and the ``metrics.csv`` / ``metrics.json`` files.

One record per epoch holds ``epoch``, ``lr`` (the rate used during the epoch), train/val loss and accuracy
(the training numbers are on what the model was trained on: adversarial examples where the batch had them),
``val_robust_accuracy`` (adversarial training: under the evaluation attack, see
:mod:`robustlr.train.validation`), ``adv_seconds`` (seconds spent generating the training attack, mean over
processes), ``adv_bank_bytes``/``adv_bank_full_bytes`` (warm start, JSON only), ``param_digest`` (a digest of all
parameters, checked equal on every process of a distributed run; JSON only),
``kappa_max``/``kappa_mean`` (condition numbers of the layers: of ``S`` for ``U S Vᵀ`` layers, of the
flattened weight otherwise), ``orth_error_max`` (the largest ``‖UᵀU − I‖_F`` or ``‖VᵀV − I‖_F`` of the
``U S Vᵀ`` layers; for the ``orthogonal`` method ``‖WWᵀ − I‖_F`` of the weights it keeps orthonormal; empty
otherwise), ``ranks`` and ``seconds``, plus the per-layer values (``kappa``, ``orth_error``, ``rank``) in the JSON only.
Both files are rewritten atomically after every epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlr.analysis.conditioning import layer_condition_numbers, orthogonality_errors
from robustlr.lowrank import compression_report
from robustlr.report import atomic_write_text

__all__ = ["CSV_COLUMNS", "json_ready", "model_diagnostics", "write_metrics"]

CSV_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_robust_accuracy",
    "kappa_max", "kappa_mean", "orth_error_max", "ranks", "adv_seconds", "seconds",
)
"""Columns of ``metrics.csv`` (``ranks`` is ``name=rank`` pairs separated by spaces)."""


@torch.no_grad()
def _row_orthogonality_errors(model: nn.Module) -> dict[str, float]:
    """``‖WWᵀ − I‖_F`` of every Linear/Conv2d weight with no more rows than columns (what QRProjectedSGD
    keeps orthonormal)."""
    errors = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weight = module.weight.detach().reshape(module.weight.shape[0], -1).to(torch.float64)
            if weight.shape[0] <= weight.shape[1]:
                gram = weight @ weight.mT
                identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
                errors[name] = float(torch.linalg.matrix_norm(gram - identity))
    return errors


def model_diagnostics(model: nn.Module, method: str) -> dict[str, Any]:
    """Conditioning, orthogonality and ranks of ``model``'s layers, summarised and per layer."""
    kappa = layer_condition_numbers(model)
    orth = _row_orthogonality_errors(model) if method == "orthogonal" else orthogonality_errors(model)
    ranks = {layer.name: layer.rank for layer in compression_report(model).layers}
    return {
        "kappa_max": max(kappa.values()),
        "kappa_mean": sum(kappa.values()) / len(kappa),
        "orth_error_max": max(orth.values()) if orth else None,
        "ranks": " ".join(f"{name}={rank}" for name, rank in ranks.items()),
        "kappa": kappa,
        "orth_error": orth,
        "rank": ranks,
    }


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _csv_text(history: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({key: "" if record.get(key) is None else record[key] for key in CSV_COLUMNS})
    return buffer.getvalue()


def write_metrics(
    csv_path: Path, json_path: Path, history: Sequence[dict[str, Any]], best_epoch: int, best_val_accuracy: float
) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.json`` (``{"best_epoch", "best_val_accuracy", "history"}``)."""
    document = {"best_epoch": best_epoch, "best_val_accuracy": best_val_accuracy, "history": list(history)}
    atomic_write_text(csv_path, _csv_text(history))
    atomic_write_text(json_path, json.dumps(json_ready(document), indent=2, allow_nan=False) + "\n")
