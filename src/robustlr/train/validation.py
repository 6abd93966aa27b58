"""Validation after every epoch: clean loss and accuracy, and robust accuracy under the *evaluation* attack.

The evaluation attack is PGD in the training norm at the training budget, with ``eval_steps`` steps, a random
start and the run's seed (e.g. PGD-L∞, 10 steps, at the adv ε): it is chosen independently of the training
attack (which may be FGSM or LoRa-PGD), so the robust accuracy that selects the best checkpoint is never the
training attack's own. It runs on the first ``robust_val_n`` validation images (0: all), never on the test
split (robust-overfitting hygiene: Rice, Wong & Kolter, ICML 2020 select by robust validation accuracy).
A sample counts as robust when it is classified correctly both clean and attacked
(:func:`robustlr.evaluate.evaluate`'s rule).

Distributed runs shard both passes over the processes and sum the counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustlr.attacks import Attack, build_attack
from robustlr.data import ImageDataset, make_loader
from robustlr.evaluate import evaluate

from .config import TrainConfig
from .distributed import Distributed
from .step import evaluate_batches

__all__ = ["Validation", "evaluation_attack", "validate"]


@dataclass(frozen=True)
class Validation:
    """Mean clean loss and accuracy on the validation split; robust accuracy on its first ``robust_val_n``
    images under the evaluation attack (``None`` without adversarial training)."""

    loss: float
    accuracy: float
    robust_accuracy: float | None

    def score(self, select_by: str) -> float:
        """The model-selection score: ``robust_accuracy`` (``"robust"``) or ``accuracy`` (``"clean"``).

        Raises:
            ValueError: for ``"robust"`` without a robust accuracy (a run without adversarial training).
        """
        if select_by == "clean":
            return self.accuracy
        if select_by != "robust" or self.robust_accuracy is None:
            raise ValueError(f"select_by must be 'clean', or 'robust' with adversarial training; got {select_by!r}")
        return self.robust_accuracy


def evaluation_attack(config: TrainConfig, model: nn.Module) -> Attack:
    """PGD in ``adv_norm`` at ``adv_eps`` with ``eval_steps`` steps and a random start, seeded by ``seed``.

    Raises:
        ValueError: if ``config.adv`` is not set (the attack takes its norm and budget from it).
    """
    if config.adv is None or config.adv_norm is None or config.adv_eps is None:
        raise ValueError("config.adv must be set: the evaluation attack takes adv_norm and adv_eps from it; got None")
    return build_attack(f"pgd-{config.adv_norm}", model, config.adv_eps, steps=config.eval_steps, seed=config.seed)


def _shard(data: ImageDataset, n: int, group: Distributed) -> ImageDataset:
    return data.subset(group.shard(n))


def validate(model: nn.Module, val: ImageDataset, config: TrainConfig, device: torch.device,
             group: Distributed) -> Validation:
    """Clean and (with ``config.adv``) robust validation of ``model`` (see the module docstring)."""
    clean = evaluate_batches(model, make_loader(_shard(val, len(val), group), config.eval_batch_size), device)
    loss_sum, correct, count = group.sum(torch.tensor([clean.loss_sum, clean.correct, clean.count],
                                                      dtype=torch.float64)).tolist()
    robust_accuracy = None
    if config.adv is not None:
        n = min(config.robust_val_n, len(val)) or len(val)
        part = _shard(val, n, group)
        robust = 0
        if len(part):
            result = evaluate(model, part, {"eval": evaluation_attack(config, model)},
                              batch_size=config.eval_batch_size, device=device, progress=False, sanity=False)
            robust = int(result.attacks[0].robust.sum())
        robust_accuracy = float(group.sum(torch.tensor([robust], dtype=torch.float64))) / n
    return Validation(loss=loss_sum / count, accuracy=correct / count, robust_accuracy=robust_accuracy)
