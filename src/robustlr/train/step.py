"""One optimisation step and one pass of evaluation: the per-batch arithmetic of training.

``train_step`` / :class:`Stepper` take a ``batch_transform(model, x, y, context) -> (x, y)`` hook applied before
the update (identity by default); adversarial training plugs an attack in there. ``context`` says where the
batch comes from (:class:`BatchContext`).

Distributed runs: process ``r`` holds ``n_r`` of the ``B`` samples of the global batch and minimises
``L_r = (k / B) Σ_{i ∈ shard r} ℓ_i`` (``k`` processes); DDP averages the gradients, giving
``(1/k) Σ_r ∇L_r = (1/B) Σ_i ∇ℓ_i``, the gradient of the single-process mean loss on the global batch (also
for shards of unequal size). Losses are cross-entropy; accuracies are counted per sample and divided by the
number of samples (never by batches × batch size, the reference code's bug B3).

Host round trips: none per step in a single process (the losses and correct counts stay on the device until
:meth:`Stepper.settle` reads them all at once); a distributed step agrees on the stop flag (one collective of one
number); float16 adds ``GradScaler``'s overflow read (:mod:`robustlr.train.precision`).
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
    """The loss became NaN or infinite; training stops. ``batch`` is the batch of the epoch (from 1) whose global
    loss was the first non-finite one, when known."""

    def __init__(self, message: str, batch: int | None = None) -> None:
        super().__init__(message)
        self.batch = batch


@dataclass(frozen=True)
class StepResult:
    """One step, as the host knows it without reading the device: the size of the global batch and whether some
    process asked to stop.  The loss and the correct predictions stay on the device until
    :meth:`Stepper.settle`."""

    count: int
    stop: bool = False


@dataclass
class Tally:
    """Running sums over the batches of an epoch (all plain numbers, so they can be checkpointed), filled by
    :meth:`Stepper.settle`."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0
    transform_seconds: float = 0.0

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


class _TransformClock:
    """Seconds spent in the batch transform, measured without stalling the device: on CUDA by a pair of events
    recorded on the stream around it (read when the steps are settled, once the stream has passed them), on
    other devices by the host clock (their work is done when the call returns)."""

    def __init__(self) -> None:
        self.host_seconds = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def run(self, device: torch.device, work: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        if device.type != "cuda":
            tic = time.perf_counter()
            out = work()
            self.host_seconds += time.perf_counter() - tic
            return out
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = work()
        end.record()
        self.events.append((begin, end))
        return out

    def take(self) -> float:
        """The seconds measured since the last ``take`` (call it after the device has passed the events)."""
        seconds = self.host_seconds + sum(begin.elapsed_time(end) for begin, end in self.events) / 1000
        self.host_seconds, self.events = 0.0, []
        return seconds


class Stepper:
    """Transform the batch, then one cross-entropy step of ``optimizer``, with no host round trip per step.

    Each step leaves its summed loss ``Σ_i ℓ_i`` and its correct count on the device; :meth:`settle` reads the
    steps taken since the last settle in one transfer (summed over the processes first), checks that every
    global loss is finite and adds them, in order, to a :class:`Tally`.  The trainer settles every
    ``LOG_EVERY`` batches, at the end of an epoch and before it saves a resumable state, so the host waits for the
    device once per interval, not once per step.  A non-finite loss is found at the next settle: the steps in
    between have run on NaN (their parameters are garbage, which is why the trainer keeps only what it saved at
    the last epoch end).

    Args:
        model: what the update runs through (the DDP wrapper in a distributed run); left in train mode.
        optimizer: the optimiser of ``module``'s parameters.
        batch_transform: the :data:`BatchTransform`, called with ``module`` in train mode.
        module: the bare model (default ``model``).
        world_size: the number of processes ``k`` (see the module docstring).
        reduce: elementwise sum of a float64 tensor over the processes (identity in a single process).
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
        self._clock = _TransformClock()
        self._pending: list[Tensor] = []  # per step, on the device: (Σ_i ℓ_i, correct) of this process
        self._batches: list[tuple[int, int]] = []  # per step: (index in the epoch, global batch size)

    def __call__(
        self, x: Tensor, y: Tensor, context: BatchContext, stopping: Callable[[], bool] = lambda: False
    ) -> StepResult:
        """One step on this process's shard ``(x, y)`` of the global batch; ``stopping()``, asked after the
        backward pass, says whether this process was asked to stop (the result says whether any was: in a
        distributed run that takes one collective of one number per step).

        Raises:
            ValueError: if the transform changed the number of samples.
        """
        self.module.train()
        with self.precision.autocast():
            x_t, y_t = self._clock.run(x.device, lambda: self.batch_transform(self.module, x, y, context))
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
        self._pending.append(torch.stack([loss_sum.detach().double(), correct.double()]))
        self._batches.append((context.index, context.global_size))
        stop = stopping()
        if self.world_size > 1:
            stop = bool(self.reduce(torch.tensor([float(stop)], dtype=torch.float64))[0] > 0)
        self.precision.step(self.optimizer)
        return StepResult(count=context.global_size, stop=stop)

    def settle(self, tally: Tally) -> None:
        """Add the steps taken since the last settle to ``tally`` (one device-to-host transfer, after summing
        over the processes): ``loss_sum += Σ_steps Σ_i ℓ_i``, ``correct``, ``count`` and the transform's seconds
        (mean over processes), step by step in order, so the sums do not depend on when settles happen.

        Raises:
            NonFiniteLossError: if the global loss of one of these steps is NaN or infinite (the first one is
                named); ``tally`` is left as it was.
        """
        if not self._pending:
            return
        steps = self.reduce(torch.stack(self._pending)).tolist()
        seconds = self._clock.take()
        if self.world_size > 1:
            seconds = float(self.reduce(torch.tensor([seconds], dtype=torch.float64))[0]) / self.world_size
        batches, self._pending, self._batches = self._batches, [], []
        for (loss_sum, _), (index, size) in zip(steps, batches):
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(f"the training loss is not finite ({loss_sum / size})", batch=index + 1)
        for (loss_sum, correct), (_, size) in zip(steps, batches):
            tally.loss_sum += loss_sum
            tally.correct += int(correct)
            tally.count += size
        tally.transform_seconds += seconds


def train_step(
    model: nn.Module,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
    batch_transform: BatchTransform = identity,
) -> Tally:
    """One single-process step on the batch ``(x, y)`` (see :class:`Stepper`), settled at once (one host read);
    ``model`` is left in train mode.

    Returns:
        the step's :class:`Tally` (its ``loss`` and ``accuracy``).

    Raises:
        NonFiniteLossError: if the loss is NaN or infinite.
    """
    stepper = Stepper(model, optimizer, batch_transform)
    stepper(x, y, BatchContext.whole(y.shape[0]))
    tally = Tally()
    stepper.settle(tally)
    return tally


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> Tally:
    """Cross-entropy and accuracy of ``model`` (in eval mode, restored afterwards) over ``batches``: the sums
    ``Σ_i ℓ_i`` and ``Σ_i [argmax f(x_i) = y_i]`` are kept on ``device`` and read once at the end."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                                 (logits.argmax(dim=1) == y).sum().double()])
            count += y.shape[0]
    finally:
        model.train(was_training)
    loss_sum, correct = sums.tolist()
    return Tally(loss_sum=loss_sum, correct=int(correct), count=count)
