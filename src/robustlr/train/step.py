"""One optimisation step and one pass of evaluation: the per-batch arithmetic of training.

``train_step`` takes a ``batch_transform(model, x, y) -> (x, y)`` hook applied before the update (identity by
default); adversarial training plugs an attack in there. Losses are cross-entropy; accuracies are counted per
sample and divided by the number of samples (never by batches × batch size, the reference code's bug B3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["BatchTransform", "NonFiniteLossError", "StepResult", "Tally", "evaluate_batches", "identity", "train_step"]

BatchTransform = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(model, x, y) -> (x, y)``: what the model is trained on instead of the batch (e.g. adversarial examples)."""


def identity(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The default :data:`BatchTransform`: train on the batch as it is."""
    return x, y


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stops without taking the step."""


@dataclass(frozen=True)
class StepResult:
    """Mean loss, correct predictions and size of one batch."""

    loss: float
    correct: int
    count: int


@dataclass
class Tally:
    """Running sums over the batches of an epoch (all plain numbers, so they can be checkpointed)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0

    def add(self, step: StepResult) -> None:
        self.loss_sum += step.loss * step.count
        self.correct += step.correct
        self.count += step.count

    @property
    def loss(self) -> float:
        """Mean loss per sample."""
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> float:
        """Correct predictions / samples."""
        return self.correct / self.count


def train_step(
    model: nn.Module,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
    batch_transform: BatchTransform = identity,
) -> StepResult:
    """Transform the batch, then one cross-entropy step of ``optimizer`` on ``model`` (left in train mode).

    Raises:
        NonFiniteLossError: if the loss is NaN or infinite; the parameters are left untouched.
    """
    x, y = batch_transform(model, x, y)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the training loss is not finite ({value})")
    loss.backward()
    optimizer.step()
    correct = int((logits.detach().argmax(dim=1) == y).sum())
    return StepResult(loss=value, correct=correct, count=y.shape[0])


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> Tally:
    """Cross-entropy and accuracy of ``model`` (in eval mode, restored afterwards) over ``batches``."""
    was_training = model.training
    model.eval()
    tally = Tally()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            correct = int((logits.argmax(dim=1) == y).sum())
            tally.add(StepResult(loss=F.cross_entropy(logits, y).item(), correct=correct, count=y.shape[0]))
    finally:
        model.train(was_training)
    return tally
