"""The step-size schedule of Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, arXiv 2003.01690, §3.2), independent of the iterate.

APGD starts every sample with step size ``η = 2ε`` and revisits it at checkpoints

    w_j = ⌈p_j · N⌉,   p_0 = 0,  p_1 = 0.22,  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),

``N`` the number of steps (:func:`checkpoints`; 22, 41, 57, 70, 80, 87, 93, 99 for ``N = 100``).  Write
``x^(k)`` for the point step ``k + 1`` starts from (``x^(0)`` the start) and ``f`` for the objective.  At
``w_j`` the step size of a sample is halved, and the sample restarts from the best point found so far,
``x^(w_j) ← x_max``, when

* condition 1: the steps of the last window increased the loss less often than a fraction ``ρ`` of them,
  ``Σ_{i=w_{j−1}}^{w_j − 1} 1[f(x^(i+1)) > f(x^(i))] < ρ · (w_j − w_{j−1})``, or
* condition 2: neither the step size nor the best loss changed over the last window,
  ``η^(w_{j−1}) ≡ η^(w_j)`` and ``f_max^(w_{j−1}) ≡ f_max^(w_j)``.

``η^(w_j)`` is the step size that reached ``w_j`` (before its own halving), so condition 2 asks that the
previous checkpoint did not halve it; ``η^(w_0) = η^(w_1) = 2ε``.  After a restart the next window's first
comparison is against ``f(x_max)``, the loss of the point that step starts from.

The schedule knows nothing of how the iterate is parametrised: the caller hands it the loss and a *state*,
any tensors with the batch as their first dimension (the image iterate and its gradient for APGD; low-rank
factors and theirs for a low-rank APGD), and gets back the state to continue from.  Everything per sample is
a device tensor and every decision a ``torch.where``; the checkpoints are Python integers, so
:meth:`APGDSchedule.update` never reads a value from the device.

Differences from the reference code (``autopgd_base.py`` of fra31/auto-attack), which follows the paper up
to details that this module takes from the paper: the reference's first checkpoint is at ``⌊0.22N⌋`` and the
gaps then shrink by ``⌊0.03N⌋`` down to ``⌊0.06N⌋`` (each at least 1; the same checkpoints as here for
``N = 100``, not for other ``N``); it halves when the increases are ``≤ ρ·(w_j − w_{j−1})`` (not ``<``); its
first window compares ``f(x^(1))`` with 0 instead of ``f(x^(0))``; it never applies condition 2 at ``w_1``;
after a restart it compares the next loss with that of the abandoned iterate.  From the same start the two
fooled the same images in the tests (``tests/test_apgd.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checks import check_int, is_real

__all__ = ["APGDSchedule", "check_rho", "checkpoints"]

_FIRST = 22
"""``p_1`` in hundredths: the schedule is computed in integer hundredths, so ``⌈p_j·N⌉`` is exact."""
_SHRINK = 3
_MIN_GAP = 6


def check_rho(rho: object) -> float:
    """Return ``rho`` as a float if it is a real number in ``(0, 1]`` (the fraction of loss increases below
    which a window halves the step size), else raise ``ValueError``."""
    if not is_real(rho) or not math.isfinite(rho) or not 0.0 < rho <= 1.0:  # type: ignore[arg-type,operator]
        raise ValueError(f"rho must be a number in (0, 1] (the fraction of steps that must increase the loss "
                         f"between checkpoints); got {rho!r}")
    return float(rho)  # type: ignore[arg-type]


def checkpoints(steps: int) -> tuple[int, ...]:
    """The checkpoints ``0 = w_0 < w_1 < … ≤ steps`` of an APGD run of ``steps`` steps (module docstring).

    Computed in integer hundredths (``p_j = P_j / 100``, ``w_j = ⌈P_j·N / 100⌉``), so no float rounding
    moves a checkpoint; values that coincide for small ``N`` appear once.
    """
    steps = check_int("steps", steps, 1)
    points, previous, current = [0], 0, _FIRST
    while (current * steps + 99) // 100 <= steps:
        w = (current * steps + 99) // 100
        if w > points[-1]:
            points.append(w)
        previous, current = current, current + max(current - previous - _SHRINK, _MIN_GAP)
    return tuple(points)


class APGDSchedule:
    """Per-sample step sizes, best points and restarts of one APGD run (see the module docstring).

    Args:
        steps: the run's number of steps ``N`` (≥ 1); it fixes the checkpoints.
        eta: the initial step size (APGD uses ``2ε``), a positive real number.
        loss: ``f(x^(0))``, the objective at the start, shape ``(N_batch,)``; its dtype and device are those
            of the schedule's tensors.
        state: the tensors that describe ``x^(0)`` (e.g. the iterate and its gradient), each with the batch as
            first dimension; the schedule keeps a copy of the best ones.
        rho: the fraction ``ρ ∈ (0, 1]`` of condition 1 (0.75 in the paper).

    Attributes:
        eta: the current step size of every sample, shape ``(N_batch,)``.
        best_loss: ``f_max``, the best objective seen per sample.
        best: the state at ``f_max`` (copies owned by the schedule).
    """

    def __init__(self, steps: int, eta: float, loss: torch.Tensor, state: Sequence[torch.Tensor],
                 rho: float = 0.75) -> None:
        self.points = checkpoints(steps)
        self.rho = check_rho(rho)
        if not is_real(eta) or not math.isfinite(eta) or eta <= 0:  # type: ignore[operator]
            raise ValueError(f"eta must be a finite number > 0 (the initial step size); got {eta!r}")
        if loss.dim() != 1:
            raise ValueError(f"loss must hold one value per sample, shape (N,), got {tuple(loss.shape)}")
        if any(t.dim() == 0 or t.shape[0] != loss.shape[0] for t in state):
            raise ValueError(f"state must be tensors whose first dimension is the batch ({loss.shape[0]}), got "
                             f"shapes {[tuple(t.shape) for t in state]}")
        loss = loss.detach()
        self.eta = torch.full_like(loss, float(eta))
        self.best_loss = loss.clone()
        self.best = tuple(t.detach().clone() for t in state)
        self._last_loss = loss.clone()
        self._increases = torch.zeros(loss.shape, dtype=torch.int64, device=loss.device)
        self._checkpoint_loss = loss.clone()
        self._halved = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
        self._window = dict(zip(self.points[1:], (b - a for a, b in zip(self.points, self.points[1:]))))

    def at_checkpoint(self, step: int) -> bool:
        """Whether ``step`` (the number of steps taken, 1…N) is a checkpoint ``w_j``, ``j ≥ 1``; host-side."""
        return step in self._window

    def step_size(self, like: torch.Tensor) -> torch.Tensor:
        """The current ``η`` per sample, shaped to broadcast against ``like`` (batch first)."""
        return self.eta.view((-1,) + (1,) * (like.dim() - 1))

    def update(self, step: int, loss: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Record ``f(x^(step))`` and the state of ``x^(step)`` after step ``step`` (1…N); return the state to
        continue from.

        The best loss and state are updated where ``loss`` is strictly larger.  At a checkpoint, the samples
        meeting condition 1 or 2 get ``η ← η/2`` and their entries of ``state`` replaced by the best state;
        ``state``'s tensors are updated *in place* (they must not require grad) and returned.
        """
        loss = loss.detach()
        torch.add(self._increases, loss > self._last_loss, out=self._increases)
        improved = loss > self.best_loss
        torch.where(improved, loss, self.best_loss, out=self.best_loss)
        for kept, new in zip(self.best, state):
            torch.where(self._rows(improved, new), new, kept, out=kept)
        self._last_loss.copy_(loss)
        if not self.at_checkpoint(step):
            return tuple(state)
        few_increases = self._increases < self.rho * self._window[step]
        stalled = ~self._halved & (self.best_loss <= self._checkpoint_loss)
        halve = few_increases | stalled
        torch.where(halve, self.eta / 2, self.eta, out=self.eta)
        for current, kept in zip(state, self.best):
            torch.where(self._rows(halve, current), kept, current, out=current)
        torch.where(halve, self.best_loss, self._last_loss, out=self._last_loss)
        self._halved.copy_(halve)
        self._checkpoint_loss.copy_(self.best_loss)
        self._increases.zero_()
        return tuple(state)

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with the samples ``rows`` (indices into the batch) only: every per-sample tensor is indexed,
        so each kept sample's schedule continues unchanged (the early stop, :mod:`robustlr.attacks.early_stop`)."""
        self.eta, self.best_loss, self._last_loss, self._increases, self._checkpoint_loss, self._halved = (
            t[rows] for t in (self.eta, self.best_loss, self._last_loss, self._increases, self._checkpoint_loss,
                              self._halved))
        self.best = tuple(t[rows] for t in self.best)

    @staticmethod
    def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-sample mask shaped to broadcast against ``like``."""
        return mask.view((-1,) + (1,) * (like.dim() - 1))
