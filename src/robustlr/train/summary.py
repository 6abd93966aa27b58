"""``summary.json`` of a finished run: its settings, model selection, adversarial training costs, compression
and the final evaluations of the last and the best model."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustlr.evaluate import EvaluationResult
from robustlr.lowrank import compression_report

from .adversarial import AdversarialTraining
from .checkpointing import RunPaths, TrainState
from .config import TrainConfig
from .final_eval import evaluation_summary
from .metrics_log import json_ready
from .validation import evaluation_attack

__all__ = ["adversarial_summary", "run_summary"]


def adversarial_summary(config: TrainConfig, state: TrainState, model: nn.Module,
                        adversarial: AdversarialTraining | None) -> dict[str, Any] | None:
    """The training attack, the evaluation attack, their costs and the warm-start memory (None without adv)."""
    if adversarial is None:
        return None
    history = state.history
    return {
        "train_attack": adversarial.describe(),
        "eval_attack": repr(evaluation_attack(config, model)),
        "fraction": config.adv_fraction,
        "bn_mode": config.adv_bn,
        "warm_start": config.adv_warm_start,
        "adv_seconds_per_epoch": sum(record["adv_seconds"] for record in history) / len(history),
        "best_val_robust_accuracy": history[state.best_epoch - 1]["val_robust_accuracy"],
        **adversarial.memory(),
    }


def run_summary(config: TrainConfig, state: TrainState, model: nn.Module, adversarial: AdversarialTraining | None,
                *, processes: int, image_shape: tuple[int, ...], classes: list[str],
                evaluations: dict[str, tuple[EvaluationResult, int]], paths: RunPaths) -> dict[str, Any]:
    """The JSON-ready content of ``summary.json``; ``evaluations`` maps ``"last"``/``"best"`` to the model's final
    evaluation and its epoch, ``model`` is the last model (its compression is reported); ``data`` records the
    dataset's name, class names (indexed by label) and image shape."""
    compression = compression_report(model, input_shape=image_shape)
    return json_ready({
        "config": config.to_dict(),
        "data": {"name": config.data, "classes": classes, "image_shape": list(image_shape)},
        "epochs_completed": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_accuracy": state.best_val_accuracy,
        "final_metrics": state.history[-1],
        "processes": processes,
        "selection": {"by": config.select_by,
                      "metric": "val_robust_accuracy" if config.select_by == "robust" else "val_accuracy"},
        "adversarial": adversarial_summary(config, state, model, adversarial),
        "compression": {
            "rank_reduction": compression.rank_reduction,
            "param_reduction": compression.param_reduction,
            "model_param_reduction": compression.model_param_reduction,
            "layers": compression.to_rows(),
        },
        "evaluation": {
            which: {"checkpoint": f"{which}.pt", "epoch": epoch, "report": paths.evaluation(which).name,
                    **evaluation_summary(evaluation, config)}
            for which, (evaluation, epoch) in evaluations.items()
        },
    })
