"""Mixed precision of training (``amp``): autocast for the forward passes, a gradient scaler for float16.

``bf16`` runs the forward passes of training (the attack's and the update's) under
``torch.autocast(device, torch.bfloat16)``; ``fp16`` uses float16 and a ``GradScaler``: the loss is multiplied
by a scale ``s`` before the backward pass, the gradients are divided by ``s`` before the step, and a step whose
gradients overflow is skipped (``s`` halves; it doubles after 2000 clean steps). Parameters, gradients and the
optimiser stay in float32, and the optimiser step runs outside autocast, so CondLR's QR retraction and SVD
projection run in float32 (:func:`robustlr.lowrank.manifold.linalg_dtype` of the float32 parameters).
Validation and the final evaluation always run in full precision.

Under float16 the training attack's objective is loss-scaled too (a fixed 2¹⁰, see
:mod:`robustlr.train.adversarial`), so its input gradients do not underflow; bfloat16 has float32's range and
needs no scale.  Host round trips: none per step, except under float16, where ``GradScaler.step`` reads whether
the gradients overflowed (one scalar read per step, to skip the step).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AMP_DTYPES", "Precision"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype of each ``amp`` mode."""


class Precision:
    """Full precision (``amp=None``) or autocast to ``amp`` on ``device``'s type (see the module docstring)."""

    def __init__(self, amp: str | None, device: torch.device) -> None:
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None or one of {tuple(AMP_DTYPES)}; got {amp!r}")
        self.amp = amp
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        """The context of the training forward passes."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.amp])

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, of ``s · loss`` under float16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: Optimizer) -> None:
        """``optimizer.step()``; under float16 on unscaled gradients, skipped if they overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without float16)."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)
