"""Final robustness evaluation of a trained model: FGSM and PGD-L∞ over the ε grid, crafted on that model.

Each model (last and best) is attacked with attacks built on itself, never with examples crafted on another
model (the reference code's bug B4 evaluated the best model on the last model's examples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from robustlr.attacks import build_attack
from robustlr.data import ImageDataset
from robustlr.evaluate import EvaluationResult, at_eps, evaluate
from robustlr.report import write_report

from .config import TrainConfig

__all__ = ["EVAL_ATTACKS", "evaluate_trained", "evaluation_summary"]

EVAL_ATTACKS = ("fgsm", "pgd-linf")
"""Attacks of the final evaluation (L∞, pixel units; PGD with ``config.eval_steps`` steps and a random start)."""


def evaluate_trained(
    model: nn.Module,
    test: ImageDataset,
    config: TrainConfig,
    out_dir: Path,
    title: str,
    extra: dict[str, Any],
    progress: bool,
) -> EvaluationResult:
    """Clean and robust test accuracy of ``model`` on the first ``config.eval_n`` test images (0: all), with
    the report files (:func:`robustlr.report.write_report`) in ``out_dir``."""
    attacks = {
        name: at_eps(lambda eps, name=name: build_attack(name, model, eps, steps=config.eval_steps, seed=config.seed))
        for name in EVAL_ATTACKS
    }
    result = evaluate(
        model, test, attacks, config.eval_eps, batch_size=config.eval_batch_size, device=config.device,
        n=min(config.eval_n, len(test)) or None, progress=progress,
    )
    write_report(result, out_dir, title=title, extra=extra)
    return result


def evaluation_summary(result: EvaluationResult) -> dict[str, Any]:
    """The numbers of ``result`` worth keeping in ``summary.json``: n, clean accuracy, robust accuracy per
    attack and ε, worst case per ε."""
    return {
        "n": result.n,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": [
            {"attack": row["attack"], "eps": row["eps"], "robust_accuracy": row["robust_accuracy"]}
            for row in result.rows()
        ],
        "worst_case": [{"eps": worst.eps, "robust_accuracy": worst.robust_accuracy} for worst in result.worst_case],
        "seconds": result.seconds,
        "warnings": list(result.warnings),
    }
