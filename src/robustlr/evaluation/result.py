"""Results of :func:`robustlr.evaluate.evaluate`: per attack × ε, per-ε worst case, per-sample masks.

Per-sample boolean masks (``clean_correct``, each attack's ``correct`` and ``robust``, each worst case's
``robust``) stay in the objects for further analysis; ``to_dict()`` gives the JSON-serialisable summary
without them.  All accuracies have the number of samples ``n`` as denominator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .specs import FIXED

__all__ = [
    "AttackResult", "WorstCase", "EvaluationResult",
    "fraction", "same_eps", "worst_case", "worst_cases_per_eps", "fixed_worst_case",
]


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
    ``mean_nuclear`` is the per-sample sum over channels of the nuclear norm; ``seconds`` is the wall time
    spent inside the attack calls.  ``kind`` is ``"grid"`` (built by ``at_eps``) or ``"fixed"``.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample masks)."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "kind": self.kind,
            "attack_repr": self.attack_repr,
            "robust_accuracy": self.robust_accuracy,
            "mean_l2": self.mean_l2,
            "mean_linf": self.mean_linf,
            "mean_nuclear": self.mean_nuclear,
            "seconds": self.seconds,
        }


@dataclass
class WorstCase:
    """Per-sample worst case over ``attacks``: a sample is robust only if it survives every one of them.

    ``eps`` is the common budget, or ``None`` for the worst case over ready attacks at their own budgets.
    """

    eps: float | None
    attacks: list[str]
    robust_accuracy: float
    robust: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample mask)."""
        return {"eps": self.eps, "attacks": list(self.attacks), "robust_accuracy": self.robust_accuracy}


def worst_case(results: list[AttackResult], eps: float | None) -> WorstCase:
    """The per-sample worst case (logical AND of the robust masks) of a non-empty list of results."""
    robust = torch.stack([r.robust for r in results]).all(dim=0)
    return WorstCase(eps, [r.attack for r in results], fraction(robust), robust)


def worst_cases_per_eps(results: list[AttackResult]) -> list[WorstCase]:
    """One worst case per distinct budget, in increasing ε, over every result evaluated at that budget
    (grid attacks and ready attacks whose own ε equals it); results without a budget are left out."""
    budgets: list[float] = []
    for eps in sorted(r.eps for r in results if r.eps is not None):
        if not budgets or not same_eps(budgets[-1], eps):
            budgets.append(eps)
    return [worst_case([r for r in results if same_eps(r.eps, eps)], eps) for eps in budgets]


@dataclass
class EvaluationResult:
    """Clean accuracy, every attack × ε, the per-ε worst case and the sanity warnings of one evaluation.

    ``worst_case`` lists one :class:`WorstCase` per budget; ``worst_case_fixed`` is the worst case over the
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

    def worst_at(self, eps: float) -> WorstCase | None:
        """The worst case at budget ``eps``, or ``None`` when no attack ran at that budget."""
        return next((w for w in self.worst_case if same_eps(w.eps, eps)), None)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per attack × ε (the ``to_dict`` of each result plus ``worst_case_accuracy``, the
        worst case at that ε, ``None`` for a ready attack without a budget), for tables and CSV."""
        rows = []
        for result in self.attacks:
            worst = self.worst_at(result.eps) if result.eps is not None else None
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
