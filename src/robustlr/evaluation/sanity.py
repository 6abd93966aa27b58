"""Sanity checks of an evaluation (AutoAttack's flags, Carlini et al. 2019): reported, never raised.

* robust accuracy must not increase with ε (else: weak, randomised or gradient-masked attack);
* a model that is accurate on clean data but keeps more than 10 % robust accuracy at an attack's largest ε
  is suspicious unless it was trained to be robust (gradient masking, or an ε grid that is too small);
* the input gradient of the cross-entropy must not be exactly zero (gradient masking, saturated outputs,
  or an output that does not depend on the input);
* the model must return logits, not probabilities (attacks on softmax outputs are weakened).

Not a check but said the same way (also with ``sanity=False``, see :func:`norm_notes`): attacks of several
norms at one ε get one worst case per norm, never a merged one.
"""

from __future__ import annotations

import warnings

import torch

from .result import AttackResult, worst_cases_per_eps
from .specs import GRID

__all__ = [
    "RobustnessWarning",
    "UNDEFENDED_CLEAN",
    "BROKEN_ROBUST",
    "PROBABILITY_TOL",
    "zero_gradient_count",
    "looks_like_probabilities",
    "sanity_warnings",
    "norm_notes",
    "emit",
]

UNDEFENDED_CLEAN = 0.5
"""Clean accuracy above which the large-ε check applies."""
BROKEN_ROBUST = 0.10
"""Robust accuracy at the largest ε above which an attack is flagged for a model that could be undefended."""
PROBABILITY_TOL = 1e-4
"""Rows summing to 1 within this tolerance (and non-negative) look like probabilities."""


class RobustnessWarning(UserWarning):
    """A sanity check of a robustness evaluation failed: the numbers may overstate robustness."""


def zero_gradient_count(grad: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """Samples whose input gradient is exactly zero, as a 0-d int64 tensor on ``device`` (not read: the caller
    sums batches on the device); ``None`` (the output ignores the input) counts them all."""
    if grad is None:
        return torch.tensor(batch_size, device=device)
    return (grad.reshape(grad.shape[0], -1) == 0).all(dim=1).sum()


def looks_like_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Whether every row is non-negative and sums to 1 within :data:`PROBABILITY_TOL`, as a 0-d bool tensor on
    the logits' device (not read: the caller combines batches on the device)."""
    rows = logits.detach().to(torch.float64)
    return (rows >= 0).all() & ((rows.sum(dim=1) - 1).abs() <= PROBABILITY_TOL).all()


def sanity_warnings(
    n: int, clean_accuracy: float, results: list[AttackResult], zero_gradients: int, probabilities: bool
) -> list[str]:
    """The messages of every failed check, in a fixed order (see the module docstring)."""
    messages = []
    if probabilities:
        messages.append(
            "model seems to output probabilities, attacks need logits: every output row is non-negative and "
            "sums to 1; remove the final softmax, or the reported robustness may be overstated"
        )
    if zero_gradients:
        messages.append(
            f"{zero_gradients} of {n} samples have an all-zero input gradient of the cross-entropy on clean "
            "data: gradient-based attacks cannot move them (gradient masking, saturated outputs, or an "
            "output that does not depend on the input)"
        )
    for name in dict.fromkeys(r.attack for r in results if r.kind == GRID):
        curve = sorted((r for r in results if r.attack == name and r.kind == GRID), key=lambda r: r.eps)
        messages += _monotonicity(name, curve)
        messages += _large_eps(name, curve[-1], clean_accuracy)
    return messages + norm_notes(results)


def norm_notes(results: list[AttackResult]) -> list[str]:
    """One message if attacks of several norms ran at some ε: their worst cases were kept apart, per norm."""
    budgets: dict[float, list[str]] = {}
    for case in worst_cases_per_eps(results):
        budgets.setdefault(case.eps, []).append(f"{case.norm or 'unknown norm'} ({', '.join(case.attacks)})")
    clashes: dict[str, list[float]] = {}
    for eps, groups in budgets.items():
        if len(groups) > 1:
            clashes.setdefault(" vs ".join(groups), []).append(eps)
    if not clashes:
        return []
    where = "; ".join(f"ε={', '.join(f'{e:g}' for e in eps)}: {groups}" for groups, eps in clashes.items())
    return [
        f"L2 and L∞ budgets were not merged: attacks of different norms ran at the same ε ({where}); an L2 and "
        "an L∞ ball of one radius are different threat models, so the worst case is given per norm "
        "(result.worst_at(eps, norm='l2' or 'linf'))"
    ]


def emit(messages: list[str]) -> None:
    """Issue each message as a :class:`RobustnessWarning`."""
    for message in messages:
        warnings.warn(message, RobustnessWarning, stacklevel=3)


def _monotonicity(name: str, curve: list[AttackResult]) -> list[str]:
    """One message per ε step at which the robust accuracy of attack ``name`` increases."""
    return [
        f"robust accuracy of {name!r} increases with ε: {lo.robust_accuracy:.4g} at ε={lo.eps:.4g} but "
        f"{hi.robust_accuracy:.4g} at ε={hi.eps:.4g}; a larger budget should never help the model "
        "(the attack may be too weak, randomised, or facing gradient masking)"
        for lo, hi in zip(curve, curve[1:])
        if hi.robust_accuracy > lo.robust_accuracy
    ]


def _large_eps(name: str, last: AttackResult, clean_accuracy: float) -> list[str]:
    """A message if an accurate model keeps more than :data:`BROKEN_ROBUST` robust accuracy at the largest ε."""
    if clean_accuracy <= UNDEFENDED_CLEAN or last.eps == 0 or last.robust_accuracy <= BROKEN_ROBUST:
        return []
    return [
        f"{name!r} leaves {last.robust_accuracy:.4g} robust accuracy at its largest ε={last.eps:.4g} "
        f"(clean accuracy {clean_accuracy:.4g}); if the model was not trained to be robust, an attack at a "
        f"large budget should bring it to at most {BROKEN_ROBUST:.0%}: this may indicate gradient masking or "
        "an ε grid that is too small (for an adversarially trained model it can be expected)"
    ]
