"""APGD-T: Auto-PGD on the targeted DLR loss over the most likely wrong classes (Croce & Hein, ICML 2020,
arXiv 2003.01690, §4), an *untargeted* attack: it succeeds when the prediction leaves the true label.

For each sample, with clean logits ``z(x)``, the targets are the other classes in decreasing order of
``z(x)`` (for a correctly classified image: the classes of the 2nd, 3rd, … largest logit).  For each of the
first ``n_target_classes`` targets ``t`` (all ``K − 1`` other classes when the model has fewer, so a
10-class default on a 5-class model runs 4 targets), :class:`~robustlr.attacks.apgd.APGD` maximises the
targeted DLR loss :func:`~robustlr.attacks.base.targeted_dlr_loss`

    DLR_t(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12),

with ``restarts`` random starts per target.  Per sample the result is that of the first (target, restart)
that fools the model; a sample no run fools gets the first run's result (target 2, first start).  Every run
attacks the whole batch (no host read decides which samples are left), so a call costs
``1 + n_targets · restarts · (steps + 3)`` forward and ``n_targets · restarts · (steps + 1)`` backward passes.
With ``early_stop=True`` (:mod:`robustlr.attacks.early_stop`) a run attacks only the samples no earlier run
fooled (one host read per run, as the reference code does) and drops those it fools as it goes: the same samples
are fooled, with less work.

Call convention: ``atk(x, y)`` with the true labels, as the reference ``APGDAttack_targeted``;
``targeted=True`` is refused (the attack chooses its own targets).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_int
from .apgd import APGD
from .base import TARGETED_DLR_CLASSES
from .early_stop import pending

__all__ = ["APGDT"]


class APGDT(APGD):
    """APGD on the targeted DLR loss, over the ``n_target_classes`` most likely wrong classes (module docstring).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits, ``num_classes ≥ 4``.
        eps: budget ``ε ≥ 0`` in ``norm``.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: APGD steps per target and restart (≥ 1; 100 in the paper).
        n_target_classes: number of target classes ``≥ 1`` (9 in the paper); capped at ``num_classes − 1``.
        restarts: random starts per target (≥ 1).
        rho: ``ρ ∈ (0, 1]`` of the step-size schedule.
        seed: seed of the random starts.
        loss_scale: factor of the objective before differentiation (see :class:`Attack`).
        early_stop: attack only the samples still unfooled, and drop those that fall (module docstring).
    """

    name = "apgd-t"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        seed: int | None = None,
        *,
        loss_scale: float | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(model, eps, norm, steps, "dlr", restarts, rho, seed, loss_scale=loss_scale,
                         early_stop=early_stop)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, 1)
        self._target: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Adversarial examples for images ``x`` with *true* labels ``y`` (see the module docstring)."""
        if targeted:
            raise ValueError("APGDT takes true labels and picks its own targets (the most likely wrong classes); "
                             "targeted=True is not supported: call atk(x, y), or use APGD(..., loss='ce') "
                             "with targeted=True to aim at given classes")
        return super().__call__(x, y)

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "loss": "dlr-targeted", "n_target_classes": self.n_target_classes}

    @property
    def min_classes(self) -> int:
        """:data:`~robustlr.attacks.base.TARGETED_DLR_CLASSES`: the targeted DLR uses the 4 largest logits."""
        return TARGETED_DLR_CLASSES

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """The targeted DLR (:func:`~robustlr.attacks.base.targeted_dlr_loss`) toward the current target class
        (``y``: the true labels)."""
        if self._target is None:
            raise RuntimeError("APGDT's objective needs a target class: it is only defined during a call")
        self._check_labels(logits.shape[1])
        return self._dlr_objective(logits, y, self._target)

    def _best_of_restarts(self, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Every (target, restart) run, keeping per sample the first that fools the model."""
        with torch.no_grad():
            clean = self._logits(x)
        classes = clean.shape[1]
        self._check_labels(classes)
        if classes < self.min_classes:
            raise ValueError(f"APGDT needs a model of at least {self.min_classes} classes (the targeted DLR divides "
                             f"by z_π1 − (z_π3 + z_π4)/2), the model has {classes}")
        count = min(self.n_target_classes, classes - 1)
        targets = clean.scatter(1, y[:, None], float("-inf")).topk(count, dim=1).indices
        every = torch.arange(len(y), device=y.device)
        try:
            best, best_fooled = self._targeted_run(x, y, targets[:, 0], 0)  # the result where no run fools
            for index in range(1, count * self.restarts):  # target index // restarts, restart index % restarts
                rows = pending(best_fooled) if self.early_stop else every
                if rows is None:
                    break
                with self._subset(rows):
                    cand, fooled = self._targeted_run(x[rows], y[rows], targets[rows, index // self.restarts], index)
                take = fooled & ~best_fooled[rows]
                best[rows] = torch.where(take.view(-1, 1, 1, 1), cand, best[rows])
                best_fooled[rows] |= fooled
        finally:
            self._target = None
        return best

    def _targeted_run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                      index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``index`` (its random start) toward ``target``: its result and where it fools the model."""
        self._target = target
        cand = self._run(x, y, False, index)
        self._target = target  # the early stop narrowed it to the samples left
        fooled, _ = self._outcome(cand, y, False)
        return cand, fooled

    def _keep(self, rows: torch.Tensor) -> None:
        self._target = self._target[rows]  # type: ignore[index]
