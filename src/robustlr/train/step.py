"""One optimisation step and one pass of evaluation: the per-batch arithmetic of training.

``train_step`` / :class:`Stepper` take a ``batch_transform(model, x, y, context) -> (x, y)`` hook applied before
the update (identity by default); adversarial training plugs an attack in there. ``context`` says where the
batch comes from (:class:`BatchContext`).

Distributed runs: process ``r`` holds ``n_r`` of the ``B`` samples of the global batch and minimises
``L_r = (k / B) Σ_{i ∈ shard r} ℓ_i`` (``k`` processes); DDP averages the gradients, giving
``(1/k) Σ_r ∇L_r = (1/B) Σ_i ∇ℓ_i``, the gradient of the single-process mean loss on the global batch (also
for shards of unequal size). Losses are cross-entropy; accuracies are counted per sample and divided by the
number of samples (never by batches × batch size, the reference code's bug B3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from .precision import Precision

__all__ = ["BatchContext", "BatchTransform", "NonFiniteLossError", "StepResult", "Stepper", "Tally",
           "evaluate_batches", "identity", "train_step"]


@dataclass(frozen=True)
class BatchContext:
    """Where a training batch comes from.

    Attributes:
        epoch: the epoch (from 1).
        index: the batch's index in the epoch (from 0).
        ids: positions in the training split of this process's samples, shape ``(n,)``, on the CPU.
        positions: positions of these samples in the global batch (all processes together), shape ``(n,)``.
        global_size: the number of samples of the global batch.
    """

    epoch: int
    index: int
    ids: Tensor
    positions: Tensor
    global_size: int

    @classmethod
    def whole(cls, size: int, epoch: int = 0, index: int = 0) -> BatchContext:
        """The context of a single-process batch of ``size`` samples that are the first ``size`` of the data."""
        every = torch.arange(size)
        return cls(epoch, index, every, every, size)


BatchTransform = Callable[[nn.Module, Tensor, Tensor, BatchContext], tuple[Tensor, Tensor]]
"""``(model, x, y, context) -> (x, y)``: what the model is trained on instead of the batch (e.g. adversarial
examples); it must keep the number of samples. ``model`` is the bare model (not the DDP wrapper)."""


def identity(model: nn.Module, x: Tensor, y: Tensor, context: BatchContext) -> tuple[Tensor, Tensor]:
    """The default :data:`BatchTransform`: train on the batch as it is."""
    return x, y


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stops without taking the step."""


@dataclass(frozen=True)
class StepResult:
    """One step: mean loss, correct predictions and size of the global batch; seconds spent in the batch
    transform (mean over processes); whether some process asked to stop."""

    loss: float
    correct: int
    count: int
    transform_seconds: float = 0.0
    stop: bool = False


@dataclass
class Tally:
    """Running sums over the batches of an epoch (all plain numbers, so they can be checkpointed)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0
    transform_seconds: float = 0.0

    def add(self, step: StepResult) -> None:
        self.loss_sum += step.loss * step.count
        self.correct += step.correct
        self.count += step.count
        self.transform_seconds += step.transform_seconds

    @property
    def loss(self) -> float:
        """Mean loss per sample."""
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> float:
        """Correct predictions / samples."""
        return self.correct / self.count


def _no_reduce(values: Tensor) -> Tensor:
    return values


class Stepper:
    """Transform the batch, then one cross-entropy step of ``optimizer``.

    Args:
        model: what the update runs through (the DDP wrapper in a distributed run); left in train mode.
        optimizer: the optimiser of ``module``'s parameters.
        batch_transform: the :data:`BatchTransform`, called with ``module`` in train mode.
        module: the bare model (default ``model``).
        world_size: the number of processes ``k`` (see the module docstring).
        reduce: elementwise sum of a float64 vector over the processes (identity in a single process).
        precision: autocast of the transform's and the update's forward passes, and the loss scaler.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        batch_transform: BatchTransform = identity,
        *,
        module: nn.Module | None = None,
        world_size: int = 1,
        reduce: Callable[[Tensor], Tensor] = _no_reduce,
        precision: Precision | None = None,
    ) -> None:
        self.model = model
        self.module = model if module is None else module
        self.optimizer = optimizer
        self.batch_transform = batch_transform
        self.world_size = world_size
        self.reduce = reduce
        self.precision = Precision(None, torch.device("cpu")) if precision is None else precision

    def __call__(
        self, x: Tensor, y: Tensor, context: BatchContext, stopping: Callable[[], bool] = lambda: False
    ) -> StepResult:
        """One step on this process's shard ``(x, y)`` of the global batch; ``stopping()``, asked after the
        backward pass, says whether this process was asked to stop (the result says whether any was).

        Raises:
            NonFiniteLossError: if the global mean loss is NaN or infinite; the parameters are left untouched.
            ValueError: if the transform changed the number of samples.
        """
        self.module.train()
        tic = time.perf_counter()
        with self.precision.autocast():
            x_t, y_t = self.batch_transform(self.module, x, y, context)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - tic
        if x_t.shape[0] != x.shape[0] or y_t.shape[0] != y.shape[0]:
            raise ValueError(f"batch_transform must keep the number of samples ({x.shape[0]}); got "
                             f"{x_t.shape[0]} images and {y_t.shape[0]} labels")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            logits = self.model(x_t)
        loss_sum = F.cross_entropy(logits.float(), y_t, reduction="sum")
        self.precision.backward(loss_sum * (self.world_size / context.global_size))
        correct = (logits.detach().argmax(dim=1) == y_t).sum()
        local = torch.stack([loss_sum.detach().double(), correct.double(),
                             torch.tensor(float(y_t.shape[0]), dtype=torch.float64, device=correct.device)]).cpu()
        flags = torch.tensor([seconds, float(stopping())], dtype=torch.float64)
        totals = self.reduce(torch.cat([local, flags]))
        loss = float(totals[0]) / float(totals[2])
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the training loss is not finite ({loss})")
        self.precision.step(self.optimizer)
        return StepResult(loss=loss, correct=int(totals[1]), count=int(totals[2]),
                          transform_seconds=float(totals[3]) / self.world_size, stop=bool(totals[4] > 0))


def train_step(
    model: nn.Module,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
    batch_transform: BatchTransform = identity,
) -> StepResult:
    """One single-process step on the batch ``(x, y)`` (see :class:`Stepper`); ``model`` is left in train mode.

    Raises:
        NonFiniteLossError: if the loss is NaN or infinite; the parameters are left untouched.
    """
    return Stepper(model, optimizer, batch_transform)(x, y, BatchContext.whole(y.shape[0]))


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
