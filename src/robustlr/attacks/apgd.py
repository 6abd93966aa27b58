"""Auto-PGD (APGD) of Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv 2003.01690, §3, in L∞ and L2, on cross-entropy, margin or DLR.

With ``P`` the projection onto ``{x' : ‖x' − x‖ ≤ ε} ∩ [0,1]^d`` and ``g = ∇f(x^(k))``, one step is

    z^(k+1) = P(x^(k) + η · d(g)),   d = sign (L∞) or g/‖g‖₂ (L2)
    x^(k+1) = P(x^(k) + α (z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1))),   α = 0.75

with ``α = 1`` (no momentum) for the first step.  The per-sample step size ``η`` starts at ``2ε`` and is
halved at checkpoints where progress stalled, restarting that sample from its best point
(:mod:`robustlr.attacks.apgd_schedule`).  The run costs ``steps + 1`` forward and backward passes (the
start and every step) and one forward pass on the clean images.

Start: ``x^(0) = clip_[0,1](x + ε·u/‖u‖)``, a uniform ``u ∈ [−1, 1]^d`` rescaled onto the L∞ sphere, or a
Gaussian ``u`` onto the L2 sphere (the reference code's draws, made by :meth:`Attack._noise`).

Result, per sample, as the reference code (fra31/auto-attack ``autopgd_base.py``) returns it: the clean
image when the model already gets it wrong; else the latest iterate that fooled the model; else the iterate
of highest loss.  Restarts (:class:`~robustlr.attacks.base.Attack`) keep the first that fools.

With float16/bfloat16 images the model is evaluated at each iterate as it would be returned (rounded to their
dtype toward ``x``, within ε; the gradient passes straight through), so a kept fooling iterate fools the model
as returned.

The loss is ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR, :func:`~robustlr.attacks.base.dlr_loss`) or
``"margin"``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_flag, check_int
from .apgd_schedule import APGDSchedule, check_rho
from .base import Attack
from .early_stop import EVERY, Shrinking, compacts
from .precision import WORK_DTYPE, largest_budget
from .projections import box_bounds, clip_unit, normalize_per_sample, per_sample_norm, project_

__all__ = ["APGD"]

MOMENTUM = 0.75
"""``α`` of the momentum step (the paper's value)."""
STEP_FACTOR = 2.0
"""The initial step size is ``STEP_FACTOR · ε`` (the paper's value, both norms)."""
STATE_TENSORS = 5
"""Perturbation-sized tensors an APGD run keeps between steps (:meth:`APGD.state_bytes`)."""


class APGD(Attack):
    """Auto-PGD (see the module docstring for the exact algorithm).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits.
        eps: budget ``ε ≥ 0`` in ``norm``; ``2ε`` (the first step size) must be finite in float32.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: number of steps ``N ≥ 1`` (100 in the paper); they fix the checkpoints.
        loss: ``"ce"`` (default), ``"dlr"`` (needs ≥ 3 classes; targeted ≥ 4) or ``"margin"``.
        restarts: independent random starts; per sample the first that fools is kept.
        rho: ``ρ ∈ (0, 1]``, the fraction of loss increases per window below which the step size halves.
        seed: seed of the random starts (see :class:`~robustlr.attacks.base.Attack`).
        loss_scale: factor of the objective before differentiation (see :class:`Attack`).
        early_stop: drop the samples that fool the model from the batch as the run goes
            (:mod:`robustlr.attacks.early_stop`): the same samples are fooled, with less work; a fooled
            sample's result is then the iterate that fooled it by the time it was dropped.
    """

    name = "apgd"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        seed: int | None = None,
        *,
        loss_scale: float | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(model, eps, norm, loss=loss, restarts=restarts, seed=seed, loss_scale=loss_scale)
        self.steps = check_int("steps", steps, 1)
        self.rho = check_rho(rho)
        self.early_stop = check_flag("early_stop", early_stop)
        largest = largest_budget(WORK_DTYPE, self.norm)
        if not STEP_FACTOR * self.eps <= largest:
            raise ValueError(f"eps must be at most {largest / STEP_FACTOR:.6g} for APGD (its first step size "
                             f"{STEP_FACTOR:g}·eps must be at most {largest:.6g} in float32, where it computes); "
                             f"got {eps!r}")

    def _describe(self) -> dict[str, object]:
        described = {**super()._describe(), "steps": self.steps, "rho": self.rho}
        return {**described, "early_stop": True} if self.early_stop else described

    def state_bytes(self, shape: tuple[int, ...], element_size: int = 4) -> int:
        """Five perturbation-sized tensors: the iterate, the previous one (momentum), the best one and its
        gradient (the restart point), and the latest that fooled the model."""
        return STATE_TENSORS * super().state_bytes(shape, element_size)

    def _start(self, x: torch.Tensor, restart: int) -> torch.Tensor:
        """``x^(0) = clip_[0,1](x + ε·u/‖u‖)``: uniform ``u`` (L∞) or Gaussian ``u`` (L2) on the ε-sphere."""
        u = self._noise("uniform" if self.norm == "linf" else "normal", tuple(x.shape[1:]), restart, x)
        scale = self.eps / (per_sample_norm(u, self.norm) + 1e-12)
        return clip_unit(torch.addcmul(x, u, scale.view(-1, 1, 1, 1)))

    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        clean_fooled, _ = self._outcome(x, y, targeted)
        x0 = x
        box = box_bounds(x, self.eps) if self.norm == "linf" else None
        scratch = torch.empty_like(x)
        current = self._start(x, restart)
        logits, loss, grad = self._evaluate(current, x, y, targeted)
        fooled = self._fooled(logits, y, targeted)
        adversarial = current.clone()
        schedule = APGDSchedule(self.steps, STEP_FACTOR * self.eps, loss, (current, grad), self.rho)
        previous, trial = torch.empty_like(x), torch.empty_like(x)
        shrinking = Shrinking()
        for step in range(1, self.steps + 1):
            torch.addcmul(current, normalize_per_sample(grad, self.norm), schedule.step_size(x), out=trial)
            project_(trial, x, self.eps, self.norm, scratch, box)  # z^(k+1)
            if step == 1:
                previous, current, trial = current, trial, previous
            else:  # x^(k) + α(z − x^(k)) + (1 − α)(x^(k) − x^(k−1)), built in the buffer of x^(k−1)
                previous.sub_(current).mul_(MOMENTUM - 1.0).add_(trial.sub_(current), alpha=MOMENTUM).add_(current)
                project_(previous, x, self.eps, self.norm, scratch, box)
                previous, current = current, previous
            logits, loss, grad = self._evaluate(current, x, y, targeted)
            now = self._fooled(logits, y, targeted)
            torch.where(now.view(-1, 1, 1, 1), current, adversarial, out=adversarial)
            fooled |= now
            current, grad = schedule.update(step, loss, (current, grad))
            if self.early_stop and step < self.steps and compacts(step, EVERY):
                done = fooled | clean_fooled
                keep = shrinking.shrink(done, torch.where(clean_fooled.view(-1, 1, 1, 1), x, adversarial))
                if keep is not None:
                    x, y, clean_fooled, fooled, current, previous, grad, adversarial = (
                        t[keep] for t in (x, y, clean_fooled, fooled, current, previous, grad, adversarial))
                    box = None if box is None else (box[0][keep], box[1][keep])
                    scratch, trial = torch.empty_like(x), torch.empty_like(x)
                    schedule.keep(keep)
                    self._keep(keep)
                    if not keep.numel():
                        break
        best = torch.where(fooled.view(-1, 1, 1, 1), adversarial, schedule.best[0])
        (result,) = shrinking.complete(torch.where(clean_fooled.view(-1, 1, 1, 1), x, best))
        return self._fit(result - x0, x0)

    def _keep(self, rows: torch.Tensor) -> None:
        """Hook of the early stop: the run goes on with the samples ``rows`` of its batch only (a subclass with
        per-sample state of its own indexes it here)."""

    def _evaluate(self, point: torch.Tensor, x: torch.Tensor, y: torch.Tensor, targeted: bool):
        """Logits, objective and its gradient at ``point`` as the attack would return it (:meth:`_as_returned`:
        for half-precision images, the image in their dtype within the budget; the gradient flows straight
        through), so that the iterates kept for fooling the model fool it as returned.  ``point`` ends with
        ``requires_grad`` off, so the loop may update it in place."""
        point.requires_grad_(True)
        logits, loss, (grad,) = self._logits_loss_and_grad(self._as_returned(point, x), y, targeted, [point])
        point.requires_grad_(False)
        return logits, loss, grad
