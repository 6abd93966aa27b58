"""Stopping early on the points an attack has already fooled.

An evaluation counts a point as broken or robust; once an iterate fools the model, further steps on that point
change nothing it reports.  AutoAttack's reference code (fra31/auto-attack) still runs APGD's and FAB's full
schedules on every point of a batch.  robustlr's APGD, APGD-T and FAB with ``early_stop=True`` (and Square always)
drop the points already fooled (FAB: already broken within ε) from their batch as they go: the robust accuracy is
the same, the work on the points that fall is cut, and the adversarial example returned for a fooled point is the
one found when it was dropped (the first fooling iterate of its window, not the one of highest loss or least
norm: use ``early_stop=False`` to get those).

The points that are left run exactly as before, as long as the model's output for an image does not depend on
the rest of its batch (a kernel whose rounding depends on the batch size can move a logit by an ulp and so tip a
near-tie; the cascade of :func:`robustlr.evaluate.evaluate` makes the same assumption).

**When.**  Knowing how many points are left is a host read, so the batch is compacted only at some steps
(:func:`compacts`): the powers of two below ``every`` (most points that fall, fall early) and every ``every``-th
step — ``⌈log₂ every⌉ + ⌊steps/every⌋`` reads per run at most.
"""

from __future__ import annotations

import torch

__all__ = ["EVERY", "Shrinking", "compacts", "pending"]

EVERY = 10
"""Steps between two compactions of APGD and FAB (after the powers of two below it): 13 host reads for 100 steps."""


def compacts(step: int, every: int) -> bool:
    """Whether a batch is compacted at ``step`` (an index from 0, or a count of steps taken from 1): at 0, at the
    powers of two below ``every`` and at its multiples."""
    return step % every == 0 or (step < every and step & (step - 1) == 0)


def pending(done: torch.Tensor) -> torch.Tensor | None:
    """The indices of the points not ``done``, in order (one host read: their number), or ``None`` if none is left.

    A stable sort puts them first, without the data-dependent output shape of ``nonzero`` (which would wait for
    the device a second time)."""
    count = int((~done).sum())
    if count == 0:
        return None
    return torch.argsort(done.to(torch.uint8), stable=True)[:count]


class Shrinking:
    """The results of a run on a batch that loses its finished points as it goes.

    :meth:`shrink` retires the points that are done (their results are written to full-batch tensors) and says
    which to keep; :meth:`complete` writes the results of the points left at the end and returns the full-batch
    results.  Without a single shrink, nothing is copied.
    """

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        """Indices in the first batch of the points still run (``None``: all of them)."""
        self._results: tuple[torch.Tensor, ...] = ()

    def shrink(self, done: torch.Tensor, *finished: torch.Tensor) -> torch.Tensor | None:
        """Retire the points where ``done`` (shape ``(n,)``, the current batch), writing their entries of each
        ``finished`` tensor (batch first) to the results; returns the indices of the points to keep (maybe
        empty), or ``None`` when none is done (nothing changes).  One host read."""
        left = int((~done).sum())
        if left == done.shape[0]:
            return None
        order = torch.argsort(done.to(torch.uint8), stable=True)
        keep, gone = order[:left], order[left:]
        if self.rows is None:
            self._results = tuple(torch.empty_like(t) for t in finished)
        positions = gone if self.rows is None else self.rows[gone]
        for result, values in zip(self._results, finished):
            result.index_copy_(0, positions, values[gone])
        self.rows = keep if self.rows is None else self.rows[keep]
        return keep

    def complete(self, *final: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The full-batch results, given the ``final`` ones of the points still run (as in :meth:`shrink`)."""
        if self.rows is None:
            return final
        if self.rows.numel():
            for result, values in zip(self._results, final):
                result.index_copy_(0, self.rows, values)
        return self._results
