"""The cascade of :func:`robustlr.evaluate.evaluate`: the attacks of each (ε, norm) group in order, each attacking
only the points still robust before it (Croce & Hein, ICML 2020: AutoAttack runs its attacks this way).

A point counts as robust at (ε, norm) only if it survives every attack of the group (the worst case), so an
attack need not see a point that is misclassified clean or that an earlier attack of the group broke: the worst
case is the same with and without the cascade, as long as each attack treats every point on its own (robustlr's
attacks do: a sample's result depends neither on its batch nor on its position, see
:mod:`robustlr.attacks.randomness`).  The cascade is a speed option: later attacks see fewer points.

Schedule, without a host round trip per stage: the points a stage attacks in a batch are known only once the
stage before it has run on that batch.  Stage ``s`` of a group (from 0) therefore runs on batch ``t − s`` at
iteration ``t``: at each iteration one fused read brings the checks of the new batch, the checks of every result
of the iteration before and the number of points each stage will attack, and a stable ``argsort`` of the mask on
the device lists those points first.  A call makes ``batches + deepest stage`` reads instead of ``batches``, and
keeps ``deepest stage + 1`` batches on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, TypeVar

from .result import budget_groups
from .specs import AttackRun

__all__ = ["Stage", "cascade_stages", "iterations"]

T = TypeVar("T")


class Stage(NamedTuple):
    """A run's place in its cascade group: ``position`` (0 first) and the index in the runs of the stage before
    it (``None`` for the first stage, which attacks the clean-correct points)."""

    position: int
    previous: int | None


def cascade_stages(runs: list[AttackRun], cascade: bool) -> list[Stage | None]:
    """The :class:`Stage` of each run in its (ε, norm) group (in the order of ``runs``), or ``None`` for a run
    that is not cascaded: every run without ``cascade``, and a ready attack without a budget (it has no group)."""
    stages: list[Stage | None] = [None] * len(runs)
    if cascade:
        where = {id(run): i for i, run in enumerate(runs)}
        for _, group in budget_groups(runs):
            indices = [where[id(run)] for run in group]
            for position, index in enumerate(indices):
                stages[index] = Stage(position, indices[position - 1] if position else None)
    return stages


def iterations(batches: Iterator[T], depth: int) -> Iterator[tuple[int, T | None]]:
    """``(t, batch)`` for every batch of ``batches``, then ``(t, None)`` ``depth`` more times (the deeper stages
    finish the last batches)."""
    t = -1
    for t, batch in enumerate(batches):
        yield t, batch
    for extra in range(depth):
        yield t + 1 + extra, None
