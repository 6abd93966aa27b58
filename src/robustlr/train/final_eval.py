"""Final robustness evaluation of a trained model: FGSM and PGD-L∞ over the ε grid, crafted on that model, plus
(adversarial training) the evaluation attack at the training budget.

Each model (last and best) is attacked with attacks built on itself, never with examples crafted on another
model (the reference code's bug B4 evaluated the best model on the last model's examples). In a distributed
run every process evaluates its block of the first ``eval_n`` test images and the shards are joined
(:func:`~robustlr.train.sharded_eval.merge_evaluations`): the same numbers as a single process, in less time.
The report files are written by the trainer (rank 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustlr.attacks import build_attack
from robustlr.data import ImageDataset
from robustlr.evaluate import AttackSpec, EvaluationResult, at_eps, evaluate
from robustlr.evaluation.result import same_eps
from robustlr.evaluation.specs import AttackFn

from .config import TrainConfig
from .distributed import Distributed
from .sharded_eval import merge_evaluations
from .validation import evaluation_attack

__all__ = ["ADV_EVAL_ATTACK", "EVAL_ATTACKS", "evaluate_trained", "evaluation_summary"]

EVAL_ATTACKS = ("fgsm", "pgd-linf")
"""Attacks of the final evaluation (L∞, pixel units; PGD with ``config.eval_steps`` steps and a random start)."""

ADV_EVAL_ATTACK = "eval-attack"
"""Name of the evaluation attack (:func:`~robustlr.train.validation.evaluation_attack`, at the training budget) in
the final evaluation of an adversarially trained model; left out when the grid's PGD-L∞ at the training ε is that
very attack."""


def _eval_attack_in_grid(config: TrainConfig) -> bool:
    """Whether the grid's PGD-L∞ at some ε already is the evaluation attack (same norm, budget, steps and seed)."""
    return config.adv_norm == "linf" and any(same_eps(eps, config.adv_eps) for eps in config.eval_eps)


def evaluate_trained(
    model: nn.Module,
    test: ImageDataset,
    config: TrainConfig,
    progress: bool,
    device: torch.device,
    group: Distributed,
) -> EvaluationResult:
    """Clean and robust test accuracy of ``model`` on the first ``config.eval_n`` test images (0: all), sharded
    over ``group``'s processes (every process gets the whole result)."""
    attacks: dict[str, AttackSpec | AttackFn] = {
        name: at_eps(lambda eps, name=name: build_attack(name, model, eps, steps=config.eval_steps, seed=config.seed))
        for name in EVAL_ATTACKS
    }
    if config.adv is not None and not _eval_attack_in_grid(config):
        attacks[ADV_EVAL_ATTACK] = evaluation_attack(config, model)
    n = min(config.eval_n, len(test)) or len(test)
    part = test.subset(group.shard(n))
    local = None
    if len(part):
        local = evaluate(model, part, attacks, config.eval_eps, batch_size=config.eval_batch_size, device=device,
                         progress=progress)
    return merge_evaluations([shard for shard in group.gather(local) if shard is not None])


def evaluation_summary(result: EvaluationResult, config: TrainConfig) -> dict[str, Any]:
    """The numbers of ``result`` worth keeping in ``summary.json``: n, clean accuracy, robust accuracy per
    attack and ε, worst case per ε, and (adversarial training) ``eval_attack_robust_accuracy``, the robust test
    accuracy under the evaluation attack."""
    summary: dict[str, Any] = {
        "n": result.n,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": [
            {"attack": row["attack"], "eps": row["eps"], "robust_accuracy": row["robust_accuracy"]}
            for row in result.rows()
        ],
        "worst_case": [{"eps": worst.eps, "norm": worst.norm, "robust_accuracy": worst.robust_accuracy} for worst in result.worst_case],
        "seconds": result.seconds,
        "warnings": list(result.warnings),
    }
    if config.adv is not None:
        name = "pgd-linf" if _eval_attack_in_grid(config) else ADV_EVAL_ATTACK
        summary["eval_attack_robust_accuracy"] = next(
            attack.robust_accuracy for attack in result.attacks
            if attack.attack == name and same_eps(attack.eps, config.adv_eps)
        )
    return summary
