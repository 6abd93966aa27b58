"""Fast gradient (sign) method: FGSM (Goodfellow et al., ICLR 2015) and its L2 form FGM.

``x_adv = clip_[0,1](x + ε · d(∇ₓ loss))`` with ``d = sign`` (L∞) or ``g/‖g‖₂`` (L2).  This is exactly one
step of :class:`~robustlr.attacks.PGD` with ``α = ε`` and no random start, and is implemented as such.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .pgd import PGD

__all__ = ["FGSM"]


class FGSM(PGD):
    """Single-step attack ``x + ε·sign(∇)`` (L∞) or ``x + ε·∇/‖∇‖₂`` (L2), clipped to ``[0,1]``."""

    name = "fgsm"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        norm: str = "linf",
        *,
        loss: str = "ce",
        seed: int | None = None,
        loss_scale: float | None = None,
    ) -> None:
        super().__init__(model, eps, norm, steps=1, alpha=None, random_start=False, seed=seed, loss=loss,
                         loss_scale=loss_scale)

    def _default_alpha(self) -> float:
        return self.eps

    def _alpha_rule(self) -> str:
        return "eps"
