"""Projected gradient descent (Madry et al., ICLR 2018, arXiv 1706.06083) in L∞ and L2.

One step, with ``g = ∇ₓ loss`` per sample:

    x ← x + α · d(g),   d = sign(g) (L∞)  or  g / ‖g‖₂ (L2)
    δ ← Π_{‖δ‖ ≤ ε}(x − x₀),   x ← clip_[0,1](x₀ + δ)

This is the update of torchattacks' ``PGD``/``PGDL2`` (which the tests check against).

Default step sizes (``alpha=None``): L∞ ``α = 2.5·ε/steps`` (Madry et al.'s rule, 2/255 at ε = 8/255 and
10 steps); L2 ``α = 1.8·ε/steps`` (the LoRa-PGD paper's PGD-L2 baseline, 0.09 at ε = 0.5 and 10 steps).
Random start: L∞ uniform in ``[−ε, ε]^d``; L2 a Gaussian direction scaled to radius ``u·ε``, ``u ~ U(0,1)``.

The loop holds the iterate in one tensor updated in place (:func:`~robustlr.attacks.projections.ascend_`,
:func:`~robustlr.attacks.projections.project_`, with L∞'s box ∩ ball as one clamp to bounds computed once per
restart); a step allocates only what the model's backward returns.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_int, check_number
from .base import Attack
from .precision import WORK_DTYPE, check_budget
from .projections import ascend_, box_bounds, per_sample_norm, project_

__all__ = ["PGD", "default_alpha"]

_ALPHA_FACTOR = {"linf": 2.5, "l2": 1.8}


def default_alpha(eps: float, steps: int, norm: str) -> float:
    """The default step size: ``2.5·ε/steps`` for L∞, ``1.8·ε/steps`` for L2."""
    return _ALPHA_FACTOR[norm] * eps / steps


class PGD(Attack):
    """Projected gradient descent attack (see the module docstring for the exact update).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits.
        eps: budget ``ε ≥ 0`` in ``norm``.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: number of gradient steps (≥ 1).
        alpha: step size ``α > 0`` (any real number representable in float32 and, at call time, in the
            dtype of ``x``); ``None`` uses :func:`default_alpha`.
        random_start: start from a random point of the ε-ball instead of ``x``.
        restarts: independent runs; per sample the best is kept (see :class:`Attack`).
        seed: seed of the random start.
        loss: ``"ce"`` or ``"margin"``.
        loss_scale: factor of the objective before differentiation (see :class:`Attack`).
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 10,
        alpha: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        seed: int | None = None,
        *,
        loss: str = "ce",
        loss_scale: float | None = None,
    ) -> None:
        super().__init__(model, eps, norm, loss=loss, restarts=restarts, seed=seed, loss_scale=loss_scale)
        self.steps = check_int("steps", steps, 1)
        if alpha is None:
            self.alpha = check_budget("alpha", self._default_alpha(), WORK_DTYPE,
                                      f"the attack computes in it; alpha defaults to {self._alpha_rule()}",
                                      self.norm)
        else:
            self.alpha = check_budget("alpha", check_number("alpha", alpha, 0.0, strict=True), WORK_DTYPE,
                                      "the attack computes in it", self.norm)
        self.random_start = bool(random_start)

    def _default_alpha(self) -> float:
        return default_alpha(self.eps, self.steps, self.norm)

    def _alpha_rule(self) -> str:
        """How the default step size follows from the other arguments (for error messages)."""
        return f"{_ALPHA_FACTOR[self.norm]}·eps/steps"

    def _budgets(self) -> dict[str, float]:
        return {**super()._budgets(), "alpha": self.alpha}

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "steps": self.steps, "alpha": self.alpha, "random_start": self.random_start}

    def _start(self, x: torch.Tensor, restart: int) -> torch.Tensor:
        """The first iterate, a tensor of its own: ``x``, or a random point of the ε-ball clipped to ``[0,1]``."""
        if not self.random_start:
            return x.clone(memory_format=torch.preserve_format)
        if self.norm == "linf":
            start = self._noise("uniform", tuple(x.shape[1:]), restart, x).mul_(self.eps)
        else:
            start = self._noise("normal", tuple(x.shape[1:]), restart, x)
            radius = self._noise("unit", (1, 1, 1), restart, x) * self.eps
            start.mul_(radius / per_sample_norm(start, "l2")[:, None, None, None])
        return start.add_(x).clamp_(0.0, 1.0)  # the noise tensor, owned by this call, becomes the iterate

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor, step: int, scratch: torch.Tensor,
                 box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Project the iterate after step ``step`` in place: ``x_adv ← clip_[0,1](x + Π_ε(x_adv − x))``."""
        project_(x_adv, x, self.eps, self.norm, scratch, box)

    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        x_adv = self._start(x, restart)
        scratch = torch.empty_like(x)
        box = box_bounds(x, self.eps) if self.norm == "linf" else None
        for step in range(self.steps):
            x_adv.requires_grad_(True)
            _, (grad,) = self._loss_and_grad(x_adv, y, targeted)
            x_adv.requires_grad_(False)  # the graph is freed: the iterate is updated in place
            ascend_(x_adv, grad, self.alpha, self.norm, scratch)
            self._project(x_adv, x, step, scratch, box)
        return self._fit(torch.sub(x_adv, x, out=scratch), x)
