"""A minimal supervised fitting loop (plain SGD with momentum), for demos and tests.

The full trainer (checkpoints, resume, CondLR, adversarial training) lives in the rest of
``robustlr.train``; this loop is the few lines needed to get a usable classifier in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_int, check_number

__all__ = ["fit", "accuracy"]


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with cross-entropy and SGD; shuffling from a generator seeded by ``seed``."""
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_number("lr", lr, strict=True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        batches = order.split(batch_size)
        for idx in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (denominator: the number of samples)."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    model.train(was_training)
    return correct / len(x)
