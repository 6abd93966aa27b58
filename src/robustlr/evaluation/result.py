"""Results of :func:`robustlr.evaluate.evaluate`: per attack × ε, per-ε worst case, per-sample masks.

Per-sample boolean masks (``clean_correct``, each attack's ``correct`` and ``robust``, each worst case's
``robust``) stay in the objects for further analysis; ``to_dict()`` gives the JSON-serialisable summary
without them.  All accuracies have the number of samples ``n`` as denominator.

With the cascade (``evaluate(..., cascade=True)``) each attack of an (ε, norm) group attacks only the points still
robust before it: its ``attacked`` count says how many, its ``stage`` its place in the group (from 1), and its
``correct`` / ``robust`` masks count the points it did not attack as broken (they were misclassified clean or
broken by an earlier attack of the group), so its robust accuracy is the group's after that stage.  The worst
case of a group is the same with and without the cascade.

Threat models are never mixed: every result carries the norm its attack declares (``"linf"``, ``"l2"``, or
``None`` when unknown), and the worst case at a budget ε is taken per norm, since ε = 0.5 in L2 and ε = 0.5 in
L∞ are different budgets.  Attacks of unknown norm form their own group at each ε.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..attacks.projections import NORMS
from .specs import FIXED

__all__ = [
    "AttackResult", "WorstCase", "EvaluationResult", "MIXED",
    "fraction", "same_eps", "worst_case", "worst_cases_per_eps", "fixed_worst_case", "norms_at", "budget_groups",
]

T = TypeVar("T")

MIXED = "mixed"
"""``WorstCase.norm`` of the worst case over ready attacks of several norms (each at its own budget)."""


def same_eps(a: float | None, b: float | None) -> bool:
    """Whether two budgets are the same (within float round-off); ``None`` matches nothing."""
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def fraction(mask: torch.Tensor) -> float:
    """Share of ``True`` entries of a per-sample mask: the count divided by the number of samples."""
    return int(mask.sum()) / mask.numel()


@dataclass
class AttackResult:
    """One attack at one budget.

    ``robust_accuracy`` counts samples that are clean-correct *and* correct under the attack; the mean
    norms of ``δ = x_adv − x`` are over all ``n`` samples (misclassified ones are attacked too);
    ``mean_nuclear`` is the per-sample sum over channels of the nuclear norm, NaN where it was not computed
    (``evaluate(nuclear=...)``; ``None`` in ``to_dict()``); ``seconds`` is the wall time
    spent inside the attack calls.  ``kind`` is ``"grid"`` (built by ``at_eps``) or ``"fixed"``; ``norm`` is
    the threat model the attack declares (``"linf"``, ``"l2"``, ``None`` if unknown).

    In a cascade (see the module docstring) the norms are means over the ``attacked`` points (NaN, ``None`` in
    ``to_dict()``, when it attacked none) and ``stage`` is the attack's place in its group, from 1; without the
    cascade ``attacked`` is ``n`` and ``stage`` ``None``.  ``family`` is the kind of information the attack
    uses (:mod:`robustlr.evaluation.families`: ``"gradient"``, ``"boundary"``, ``"score"``; ``None`` if
    unknown).
    """

    attack: str
    eps: float | None
    kind: str
    attack_repr: str
    robust_accuracy: float
    mean_l2: float
    mean_linf: float
    mean_nuclear: float
    seconds: float
    correct: torch.Tensor = field(repr=False)
    robust: torch.Tensor = field(repr=False)
    norm: str | None = None
    attacked: int | None = None
    stage: int | None = None
    family: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample masks; NaN norms are ``None``)."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "norm": self.norm,
            "kind": self.kind,
            "family": self.family,
            "attack_repr": self.attack_repr,
            "robust_accuracy": self.robust_accuracy,
            "attacked": self.attacked,
            "stage": self.stage,
            "mean_l2": _number(self.mean_l2),
            "mean_linf": _number(self.mean_linf),
            "mean_nuclear": _number(self.mean_nuclear),
            "seconds": self.seconds,
        }


def _number(value: float) -> float | None:
    """``value``, or ``None`` for NaN (a norm not computed, or a mean over no point)."""
    return None if math.isnan(value) else value


@dataclass
class WorstCase:
    """Per-sample worst case over ``attacks``: a sample is robust only if it survives every one of them.

    ``eps`` is the common budget, or ``None`` for the worst case over ready attacks at their own budgets;
    ``norm`` the attacks' common norm (``None``: unknown; :data:`MIXED`: ready attacks of several norms).
    """

    eps: float | None
    attacks: list[str]
    robust_accuracy: float
    robust: torch.Tensor = field(repr=False)
    norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample mask)."""
        return {"eps": self.eps, "norm": self.norm, "attacks": list(self.attacks),
                "robust_accuracy": self.robust_accuracy}


def worst_case(results: list[AttackResult], eps: float | None) -> WorstCase:
    """The per-sample worst case (logical AND of the robust masks) of a non-empty list of results; its norm is
    the results' common norm, :data:`MIXED` if they differ."""
    robust = torch.stack([r.robust for r in results]).all(dim=0)
    norms = list(dict.fromkeys(r.norm for r in results))
    return WorstCase(eps, [r.attack for r in results], fraction(robust), robust, norms[0] if len(norms) == 1 else MIXED)


def budget_groups(items: Sequence[T]) -> list[tuple[float, list[T]]]:
    """``items`` (anything with ``eps`` and ``norm``: attack runs, results) grouped by (budget, norm): one
    ``(ε, group)`` per distinct budget (within round-off, :func:`same_eps`; ε the smallest) and norm, in increasing
    ε and, at one ε, norms in order of first appearance; items keep their order inside a group.  Items without
    a budget are left out.  These are the groups of the worst case and of the cascade."""
    budgets: list[float] = []
    for eps in sorted(item.eps for item in items if item.eps is not None):
        if not budgets or not same_eps(budgets[-1], eps):
            budgets.append(eps)
    groups = []
    for eps in budgets:
        at = [item for item in items if same_eps(item.eps, eps)]
        for norm in dict.fromkeys(item.norm for item in at):
            groups.append((eps, [item for item in at if item.norm == norm]))
    return groups


def worst_cases_per_eps(results: list[AttackResult]) -> list[WorstCase]:
    """One worst case per distinct (budget, norm), in increasing ε (norms in order of first appearance), over
    every result evaluated at that budget in that norm (grid attacks and ready attacks whose own ε equals it);
    results without a budget are left out.  L2 and L∞ results at the same ε are never merged."""
    return [worst_case(group, eps) for eps, group in budget_groups(results)]


def norms_at(cases: list[WorstCase], eps: float) -> list[str | None]:
    """The norms of the worst cases at budget ``eps`` (in their order)."""
    return [w.norm for w in cases if same_eps(w.eps, eps)]


@dataclass
class EvaluationResult:
    """Clean accuracy, every attack × ε, the per-ε worst case and the sanity warnings of one evaluation.

    ``worst_case`` lists one :class:`WorstCase` per budget and norm; ``worst_case_fixed`` is the worst case over the
    ready (non-``at_eps``) attacks, each at its own budget, or ``None`` when there are none.
    ``clean_correct`` is the per-sample mask of correct clean predictions.  ``warnings`` are the failed sanity
    checks (also issued as ``RobustnessWarning``); ``notes`` what the numbers mean without anything having failed
    (an evaluation by gradient attacks only is an upper bound on the robust accuracy); ``cascade`` whether the
    attacks of each (ε, norm) group ran as a cascade.
    """

    n: int
    clean_accuracy: float
    device: str
    seconds: float
    attacks: list[AttackResult]
    worst_case: list[WorstCase]
    worst_case_fixed: WorstCase | None
    warnings: list[str]
    clean_correct: torch.Tensor = field(repr=False)
    notes: list[str] = field(default_factory=list)
    cascade: bool = False

    def worst_at(self, eps: float, norm: str | None = None) -> WorstCase | None:
        """The worst case at budget ``eps`` (in ``norm``, if given), or ``None`` when no attack ran there.

        Raises:
            ValueError: if ``norm`` is not ``None``, ``"linf"`` or ``"l2"``, or if ``norm`` is ``None`` while
                attacks of several norms ran at ``eps`` (their worst cases are kept apart: say which one).
        """
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be None or one of {NORMS}, got {norm!r}")
        matches = [w for w in self.worst_case if same_eps(w.eps, eps) and (norm is None or w.norm == norm)]
        if len(matches) > 1:
            raise ValueError(
                f"worst_at(eps={eps:g}) needs a norm: attacks of norms {[w.norm for w in matches]} ran at this "
                "budget and their worst cases are kept apart; pass norm='linf' or norm='l2'"
            )
        return matches[0] if matches else None

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per attack × ε (the ``to_dict`` of each result plus ``worst_case_accuracy``, the
        worst case at that ε in the attack's norm, ``None`` for a ready attack without a budget), for tables
        and CSV."""
        rows = []
        for result in self.attacks:
            worst = next((w for w in self.worst_case if same_eps(w.eps, result.eps) and w.norm == result.norm), None)
            row = result.to_dict()
            row["worst_case_accuracy"] = None if worst is None else worst.robust_accuracy
            rows.append(row)
        return rows

    def standard_rows(self) -> list[dict[str, Any]]:
        """The standard evaluation in RobustBench's form: one row per (ε, norm) worst case with ``eps``, ``norm``,
        ``n``, ``clean_accuracy``, ``robust_accuracy`` (the worst case), ``attacks`` (their names, in the order
        they ran) and ``seconds`` (the time spent in those attacks)."""
        rows = []
        for worst in self.worst_case:
            runs = [r for r in self.attacks if same_eps(r.eps, worst.eps) and r.norm == worst.norm]
            rows.append({"eps": worst.eps, "norm": worst.norm, "n": self.n, "clean_accuracy": self.clean_accuracy,
                         "robust_accuracy": worst.robust_accuracy, "attacks": ", ".join(worst.attacks),
                         "seconds": sum(r.seconds for r in runs)})
        return rows

    def stage_rows(self) -> list[dict[str, Any]]:
        """The cascade, one row per stage: ``eps``, ``norm``, ``stage`` (from 1), ``attack``, ``attacked`` (points
        it attacked: still robust before it), ``robust_accuracy`` (the group's after it) and ``seconds``; by (ε,
        norm) group, in the order the stages ran.  Empty without the cascade."""
        return [{"eps": eps, "norm": r.norm, "stage": r.stage, "attack": r.attack, "attacked": r.attacked,
                 "robust_accuracy": r.robust_accuracy, "seconds": r.seconds}
                for eps, group in budget_groups(self.attacks) for r in group if r.stage is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample masks)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "device": self.device,
            "seconds": self.seconds,
            "cascade": self.cascade,
            "attacks": [r.to_dict() for r in self.attacks],
            "worst_case": [w.to_dict() for w in self.worst_case],
            "worst_case_fixed": None if self.worst_case_fixed is None else self.worst_case_fixed.to_dict(),
            "standard": self.standard_rows(),
            "stages": self.stage_rows(),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def fixed_worst_case(results: list[AttackResult]) -> WorstCase | None:
    """The worst case over the ready attacks (kind ``"fixed"``) at their own budgets, ``None`` if there are none."""
    fixed = [r for r in results if r.kind == FIXED]
    return worst_case(fixed, None) if fixed else None
