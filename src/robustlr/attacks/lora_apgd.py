"""LoRa-APGD: LoRa-PGD's low-rank factors driven by Auto-PGD's step-size schedule and momentum.

robustlr's combination of two published attacks: the parametrisation and the normalised factor step of
LoRa-PGD (Savostianova, Zangrando & Tudisco, arXiv 2410.12607; :class:`~robustlr.attacks.LoRaPGD`) with the
per-sample step size, momentum and best-point restarts of Auto-PGD (Croce & Hein, ICML 2020, arXiv
2003.01690, §3.2; :class:`~robustlr.attacks.APGD`).

The perturbation of every image channel is ``D_{b,c} = U_{b,c} V_{b,c}`` of rank ``≤ r``, applied as
LoRa-PGD applies it, ``δ̂ = ε·D/‖D‖`` (per sample; L∞: per channel, ``max |D|``) and
``x_adv = clip_[0,1](x + δ̂)``, so ``‖δ̂‖ ≤ ε`` and ``rank(δ̂_{b,c}) ≤ r`` before the clip hold by
construction whatever the factors.  With ``G_U, G_V`` the gradients of the objective ``f`` at
``(U^(k), V^(k))`` and ``n(G) = G/‖G‖_F`` per sample, one step is

    Z_U = U^(k) + η_k · n(G_U),    Z_V = V^(k) + η_k · n(G_V)                       (LoRa-PGD's step, scaled)
    U^(k+1) = U^(k) + α (Z_U − U^(k)) + (1 − α)(U^(k) − U^(k−1)),   the same for V,   α = 0.75

with ``α = 1`` (no momentum) at the first step.  The factors are unconstrained (no projection: the budget is
met by the rescaling).  ``η`` is per sample, from :class:`~robustlr.attacks.apgd_schedule.APGDSchedule`: it
starts at :data:`STEP_SIZE` (1, LoRa-PGD's unit step on a unit-norm ``U₀``) and is halved at the schedule's
checkpoints where progress stalled, the sample then restarting from its best factors and their gradients.
Because ``f`` is invariant to ``U → aU`` (``a > 0``), a step's effect is its angle, about ``η/‖U‖``: the
factor norms grow as LoRa-PGD's do (its implicit ∝ 1/√k decay), and the schedule's halvings come on top.

Start: LoRa-PGD's ``"lora"`` init (``U₀`` Gaussian with ``‖U₀‖_F = 1``, ``V₀ = 0``), so ``δ̂ = 0``: the
start point is the clean image and its evaluation doubles as the clean check.  Result, per sample, as APGD
returns it: the clean image (zero factors) when the model already gets it wrong; else the latest factors that
fooled the model; else the factors of highest loss — each of rank ``≤ r``.  Restarts (random ``U₀`` each,
:class:`~robustlr.attacks.base.Attack`) keep the first that fools.  With half-precision images every iterate is
evaluated as the image it would be returned as (rounded to their dtype toward ``x``, within ε), so factors kept
for fooling the model fool it as returned.

Cost: ``steps + 1`` forward and backward passes (the start and every step; LoRa-PGD of ``k`` steps makes
``k``, APGD of ``k`` steps ``k + 1`` and one forward pass), each with LoRa-PGD's factor gradients
(``LoRaPGD._l2_factor_grads``, the L∞ path by autograd).  State: a few copies of the factors
(iterate, previous iterate, gradients, best, last fooling), ``N·C·r·(H+W)`` entries each.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .apgd import MOMENTUM
from .apgd_schedule import APGDSchedule, check_rho
from .lora_pgd import LoRaPGD
from .projections import normalize_per_sample

__all__ = ["LoRaAPGD", "STEP_SIZE"]

STEP_SIZE = 1.0
"""The first step size ``η₀`` of every sample: LoRa-PGD's unit step (its ``U₀`` has unit norm)."""


class LoRaAPGD(LoRaPGD):
    """LoRa-PGD's factors ``U, V`` optimised with APGD's schedule and momentum (see the module docstring).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits.
        eps: budget ``ε ≥ 0`` (L2 by default).
        rank: per-channel rank, an int in ``[1, min(H, W)]`` or a fraction of ``min(H, W)`` in ``(0, 1]``
            (as :class:`LoRaPGD`).
        norm: ``"l2"`` or ``"linf"`` (LoRa-PGD's L∞ extension).
        steps: number of steps ``N ≥ 1`` (they fix the checkpoints; APGD's default is 100).
        restarts: independent random ``U₀``; per sample the first that fools is kept.
        rho: ``ρ ∈ (0, 1]``, the fraction of loss increases per window below which the step size halves.
        seed: seed of the random ``U₀``.
        loss: ``"ce"``, ``"margin"`` or ``"dlr"``.
        loss_scale: factor of the objective before differentiation (see :class:`~robustlr.attacks.base.Attack`).
    """

    name = "lora-apgd"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float = 0.5,
        rank: int | float = 0.1,
        norm: str = "l2",
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        seed: int | None = None,
        *,
        loss: str = "ce",
        loss_scale: float | None = None,
    ) -> None:
        super().__init__(model, eps, rank, norm, steps, "lora", restarts, seed, loss=loss, loss_scale=loss_scale)
        self.rho = check_rho(rho)
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "rho": self.rho}

    def factors(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors ``(U, V)`` the first restart returns after a run of ``steps`` steps (default
        ``self.steps``; 0 gives the init): zero where the clean image is already misclassified, else the latest
        that fooled the model, else those of highest loss; in the working dtype."""
        return super().factors(x, y, targeted, steps)

    def _loss_and_grad(
        self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool, wrt: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`Attack._loss_and_grad`, keeping the logits and the objective of the point in ``self._seen``
        (the schedule and the record of fooling factors read them; LoRa-PGD's factor gradients call this)."""
        logits, objective, grads = self._logits_loss_and_grad(x_adv, y, targeted, wrt)
        self._seen = (logits, objective)
        return objective, grads

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, ut: torch.Tensor, v: torch.Tensor,
                  p: torch.Tensor, x_adv: torch.Tensor):
        """Logits, objective and factor gradients ``(G_Uᵀ, G_V)`` at the factors ``(Uᵀ, V)`` (LoRa-PGD's steps
        keep ``Uᵀ``): one forward and backward pass of the model (``p``, ``x_adv``: LoRa-PGD's two image-sized
        buffers)."""
        grads = self._l2_factor_grads if self.norm == "l2" else self._autograd_factor_grads
        g_ut, g_v = grads(x, y, targeted, ut, v, p, x_adv)
        logits, objective = self._seen  # type: ignore[misc]
        self._seen = None
        return logits, objective, g_ut, g_v

    def _optimize(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected factors ``(U, V)`` of one restart (module docstring); ``steps = 0``: the init.  The
        iterates are kept as ``(Uᵀ, V)``, the layout of LoRa-PGD's factor gradients; ``‖Uᵀ‖_F = ‖U‖_F``, so the
        steps are the same."""
        u, v = self._lora_init(x, self.resolved_rank(tuple(x.shape)), restart)
        if steps == 0:
            return u, v
        ut = u.mT.contiguous()
        p = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        x_adv = torch.empty_like(x)
        logits, loss, g_ut, g_v = self._evaluate(x, y, targeted, ut, v, p, x_adv)  # at δ̂ = 0: the clean images
        clean_fooled = self._fooled(logits, y, targeted)
        fooled = clean_fooled.clone()
        fooling_ut, fooling_v = ut.clone(), v.clone()
        schedule = APGDSchedule(steps, STEP_SIZE, loss, (ut, v, g_ut, g_v), self.rho)
        previous_ut, previous_v = ut, v
        for step in range(1, steps + 1):
            alpha = 1.0 if step == 1 else MOMENTUM
            eta = schedule.step_size(ut) * alpha
            new_ut = torch.addcmul(ut, normalize_per_sample(g_ut, "l2"), eta)
            new_v = torch.addcmul(v, normalize_per_sample(g_v, "l2"), eta)
            if step > 1:
                new_ut.add_(ut - previous_ut, alpha=1.0 - alpha)
                new_v.add_(v - previous_v, alpha=1.0 - alpha)
            previous_ut, previous_v, ut, v = ut, v, new_ut, new_v
            logits, loss, g_ut, g_v = self._evaluate(x, y, targeted, ut, v, p, x_adv)
            now = self._fooled(logits, y, targeted).view(-1, 1, 1, 1)
            torch.where(now, ut, fooling_ut, out=fooling_ut)
            torch.where(now, v, fooling_v, out=fooling_v)
            fooled |= now.view(-1)
            ut, v, g_ut, g_v = schedule.update(step, loss, (ut, v, g_ut, g_v))
        fooled, clean_fooled = fooled.view(-1, 1, 1, 1), clean_fooled.view(-1, 1, 1, 1)
        best_ut, best_v = schedule.best[:2]
        ut = torch.where(clean_fooled, 0.0, torch.where(fooled, fooling_ut, best_ut))
        v = torch.where(clean_fooled, 0.0, torch.where(fooled, fooling_v, best_v))
        return ut.mT, v
