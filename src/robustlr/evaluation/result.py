"""Results of :func:`robustlr.evaluate.evaluate`: per attack × ε, per-ε worst case, per-sample masks.

Per-sample boolean masks (``clean_correct``, each attack's ``correct`` and ``robust``, each worst case's
``robust``) stay in the objects for further analysis; ``to_dict()`` gives the JSON-serialisable summary
without them.  All accuracies have the number of samples ``n`` as denominator.

Threat models are never mixed: every result carries the norm its attack declares (``"linf"``, ``"l2"``, or
``None`` when unknown), and the worst case at a budget ε is taken per norm, since ε = 0.5 in L2 and ε = 0.5 in
L∞ are different budgets.  Attacks of unknown norm form their own group at each ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks.projections import NORMS
from .specs import FIXED

__all__ = [
    "AttackResult", "WorstCase", "EvaluationResult", "MIXED",
    "fraction", "same_eps", "worst_case", "worst_cases_per_eps", "fixed_worst_case", "norms_at",
]

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample masks)."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "norm": self.norm,
            "kind": self.kind,
            "attack_repr": self.attack_repr,
            "robust_accuracy": self.robust_accuracy,
            "mean_l2": self.mean_l2,
            "mean_linf": self.mean_linf,
            "mean_nuclear": None if math.isnan(self.mean_nuclear) else self.mean_nuclear,
            "seconds": self.seconds,
        }


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


def worst_cases_per_eps(results: list[AttackResult]) -> list[WorstCase]:
    """One worst case per distinct (budget, norm), in increasing ε (norms in order of first appearance), over
    every result evaluated at that budget in that norm (grid attacks and ready attacks whose own ε equals it);
    results without a budget are left out.  L2 and L∞ results at the same ε are never merged."""
    budgets: list[float] = []
    for eps in sorted(r.eps for r in results if r.eps is not None):
        if not budgets or not same_eps(budgets[-1], eps):
            budgets.append(eps)
    cases = []
    for eps in budgets:
        at = [r for r in results if same_eps(r.eps, eps)]
        for norm in dict.fromkeys(r.norm for r in at):
            cases.append(worst_case([r for r in at if r.norm == norm], eps))
    return cases


def norms_at(cases: list[WorstCase], eps: float) -> list[str | None]:
    """The norms of the worst cases at budget ``eps`` (in their order)."""
    return [w.norm for w in cases if same_eps(w.eps, eps)]


@dataclass
class EvaluationResult:
    """Clean accuracy, every attack × ε, the per-ε worst case and the sanity warnings of one evaluation.

    ``worst_case`` lists one :class:`WorstCase` per budget and norm; ``worst_case_fixed`` is the worst case over the
    ready (non-``at_eps``) attacks, each at its own budget, or ``None`` when there are none.
    ``clean_correct`` is the per-sample mask of correct clean predictions.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample masks)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "device": self.device,
            "seconds": self.seconds,
            "attacks": [r.to_dict() for r in self.attacks],
            "worst_case": [w.to_dict() for w in self.worst_case],
            "worst_case_fixed": None if self.worst_case_fixed is None else self.worst_case_fixed.to_dict(),
            "warnings": list(self.warnings),
        }


def fixed_worst_case(results: list[AttackResult]) -> WorstCase | None:
    """The worst case over the ready attacks (kind ``"fixed"``) at their own budgets, ``None`` if there are none."""
    fixed = [r for r in results if r.kind == FIXED]
    return worst_case(fixed, None) if fixed else None
