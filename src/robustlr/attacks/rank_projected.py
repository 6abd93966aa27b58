"""PGD whose perturbation is projected to rank r per channel (the LoRa-PGD paper's baseline).

After the ε-ball projection, the perturbation of every (image, channel) is replaced by its best rank-r
approximation (truncated SVD, Eckart–Young) — only at the last step (``project="last"``, the paper's
baseline ``PGDL2_proj_r``) or at every step (``project="every"``).  The clip to ``[0,1]`` that follows can
raise the rank again; the truncation cannot increase the norm (‖P_r δ‖ ≤ ‖δ‖ in L2), but in L∞ it can,
so for ``norm="linf"`` the truncated perturbation is projected onto the ball once more (which may also
raise the rank: L∞ budget and rank cannot both be exact).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .pgd import PGD
from .projections import check_rank_spec, clip_unit, project_ball, resolve_rank, truncate_rank

__all__ = ["RankProjectedPGD"]

PROJECT_MODES = ("last", "every")


class RankProjectedPGD(PGD):
    """PGD with a per-channel rank-``rank`` truncation of the perturbation.

    Args:
        rank: an integer number in ``[1, min(H, W)]`` or a fraction of ``min(H, W)`` in ``(0, 1]`` (any
            other real number, ``np.float32`` included).
        project: ``"last"`` (default, the paper's baseline) or ``"every"`` step.
        Other arguments as :class:`~robustlr.attacks.PGD` (default ``norm="l2"``).
    """

    name = "rank-pgd"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float = 0.5,
        rank: int | float = 0.1,
        norm: str = "l2",
        project: str = "last",
        steps: int = 10,
        alpha: float | None = None,
        random_start: bool = False,
        restarts: int = 1,
        seed: int | None = None,
        *,
        loss: str = "ce",
        loss_scale: float | None = None,
    ) -> None:
        super().__init__(model, eps, norm, steps, alpha, random_start, restarts, seed, loss=loss,
                         loss_scale=loss_scale)
        if project not in PROJECT_MODES:
            raise ValueError(f"project must be one of {PROJECT_MODES}, got {project!r}")
        self.rank = check_rank_spec(rank)
        self.project = project
        self._rank_now = 1

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "rank": self.rank, "project": self.project}

    def check_fits(self, shape: tuple[int, ...], classes: int) -> None:
        """:meth:`Attack.check_fits`, and a rank that fits images of ``shape``."""
        super().check_fits(shape, classes)
        resolve_rank(self.rank, min(shape[-2:]))

    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        self._rank_now = resolve_rank(self.rank, min(x.shape[-2:]))
        return super()._run(x, y, targeted, restart)

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor, step: int, scratch: torch.Tensor,
                 box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """PGD's projection, or, at the steps that truncate, ``x_adv ← clip_[0,1](x + T_r(Π_ε(x_adv − x)))``
        (L∞: ``Π_ε`` once more after the truncation ``T_r``)."""
        if self.project == "last" and step != self.steps - 1:
            super()._project(x_adv, x, step, scratch, box)
            return
        low = truncate_rank(project_ball(x_adv - x, self.eps, self.norm), self._rank_now)
        if self.norm == "linf":
            low = project_ball(low, self.eps, self.norm)
        x_adv.copy_(clip_unit(x + low))
