"""Sanity checks of an evaluation (AutoAttack's flags, Croce & Hein ICML 2020; Carlini et al. 2019): reported,
never raised.

Of the model (:func:`model_warnings`, :func:`class_warnings`):

* the model must return logits, not probabilities (attacks on softmax outputs are weakened);
* the input gradient of the cross-entropy must not be exactly zero (gradient masking, saturated outputs,
  or an output that does not depend on the input);
* the model must be deterministic: two identical forward passes of the first batch may differ by at most
  :data:`RANDOMISED_RTOL` (relative, per sample), else it is a randomised defence that needs an attack averaging
  over its randomness (EOT; AutoAttack's ``version="rand"``);
* an attack that targets ``n_target_classes`` other classes (APGD-T, FAB-T: 9 by default) needs that many: a
  model with fewer classes gets all of them.

Of the attacks' numbers (:func:`attack_warnings`):

* robust accuracy must not increase with ε (else: weak, randomised or gradient-masked attack);
* a model that is accurate on clean data but keeps more than 10 % robust accuracy at an attack's largest ε
  is suspicious unless it was trained to be robust (gradient masking, or an ε grid that is too small);
* gradient masking: at one (ε, norm), attacks that do not follow a loss gradient (FAB, Square:
  :mod:`robustlr.evaluation.families`) break at least one point and at least :data:`MASKING_SHARE` of the points
  that the gradient attacks left robust.

Not checks but said the same way (also with ``sanity=False``): attacks of several norms at one ε get one worst
case per norm, never a merged one (:func:`norm_notes`, a warning); an evaluation by gradient attacks only is an
upper bound on the robust accuracy (:func:`upper_bound_notes`, a note: ``result.notes``, not a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from .families import BOUNDARY, GRADIENT, SCORE
from .result import AttackResult, budget_groups, worst_cases_per_eps
from .specs import AttackRun, GRID

__all__ = [
    "RobustnessWarning",
    "UNDEFENDED_CLEAN",
    "BROKEN_ROBUST",
    "PROBABILITY_TOL",
    "RANDOMISED_RTOL",
    "MASKING_SHARE",
    "zero_gradient_count",
    "looks_like_probabilities",
    "forward_spread",
    "sanity_warnings",
    "model_warnings",
    "class_warnings",
    "attack_warnings",
    "norm_notes",
    "upper_bound_notes",
    "emit",
]

UNDEFENDED_CLEAN = 0.5
"""Clean accuracy above which the large-ε check applies."""
BROKEN_ROBUST = 0.10
"""Robust accuracy at the largest ε above which an attack is flagged for a model that could be undefended."""
PROBABILITY_TOL = 1e-4
"""Rows summing to 1 within this tolerance (and non-negative) look like probabilities."""
RANDOMISED_RTOL = 1e-5
"""Largest relative difference ``‖z₁ − z₂‖₂ / ‖z₁‖₂`` of the logits of two identical forward passes of a sample
for a deterministic model."""
MASKING_SHARE = 0.10
"""Share of the points left robust by the gradient attacks that FAB / Square may break before gradient masking is
flagged (and at least one point)."""


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


def forward_spread(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """The largest relative difference ``‖z₁ − z₂‖₂ / ‖z₁‖₂`` over the samples of ``x`` between ``logits`` (a
    first forward pass) and a second forward pass, as a 0-d float64 tensor on the device (not read)."""
    with torch.no_grad():
        first, second = logits.detach().double(), model(x).detach().double()
    return ((second - first).norm(dim=1) / first.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)).max()


def sanity_warnings(
    n: int, clean_accuracy: float, results: list[AttackResult], zero_gradients: int, probabilities: bool,
    spread: float = 0.0, class_messages: Sequence[str] = (),
) -> list[str]:
    """The messages of every failed check, in a fixed order (see the module docstring): the model's
    (:func:`model_warnings`, then ``class_messages`` of :func:`class_warnings`), the attacks'
    (:func:`attack_warnings`), then :func:`norm_notes`."""
    return (model_warnings(n, zero_gradients, probabilities, spread) + list(class_messages)
            + attack_warnings(clean_accuracy, results) + norm_notes(results))


def model_warnings(n: int, zero_gradients: int, probabilities: bool, spread: float = 0.0) -> list[str]:
    """Probability outputs, ``zero_gradients`` samples (of ``n``) with an all-zero input gradient, a randomised
    model (two forward passes ``spread`` apart, relative, above :data:`RANDOMISED_RTOL`)."""
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
    if spread > RANDOMISED_RTOL:
        messages.append(
            f"model seems randomised: two identical forward passes of the first batch gave logits {spread:.3g} "
            f"apart (relative; a deterministic model: at most {RANDOMISED_RTOL:g}); an attack and its evaluation "
            "each see other draws, so the reported robustness may be overstated: remove the randomness at test "
            "time or evaluate with an attack that averages over it (EOT, AutoAttack's version='rand')"
        )
    return messages


def class_warnings(runs: list[AttackRun], classes: int) -> list[str]:
    """One message per attack asking for more target classes (its ``n_target_classes``: APGD-T, FAB-T) than the
    ``classes − 1`` others a model with ``classes`` classes has."""
    messages = []
    for name in dict.fromkeys(run.name for run in runs):
        wanted = getattr(next(run for run in runs if run.name == name).attack, "n_target_classes", None)
        if isinstance(wanted, int) and wanted > classes - 1:
            messages.append(
                f"{name!r} asks for {wanted} target classes but the model has only {classes} classes: it targets "
                f"all {classes - 1} others"
            )
    return messages


def attack_warnings(clean_accuracy: float, results: list[AttackResult]) -> list[str]:
    """Robust accuracy rising with ε, accuracy left at the largest ε (per grid attack), gradient masking (per
    (ε, norm) group)."""
    messages = []
    stages = {r.attack for r in results if r.stage is not None}
    finals = {max(group, key=lambda r: r.stage).attack for _, group in budget_groups(results)
              if all(r.stage is not None for r in group)}
    for name in dict.fromkeys(r.attack for r in results if r.kind == GRID):
        curve = sorted((r for r in results if r.attack == name and r.kind == GRID), key=lambda r: r.eps)
        messages += _monotonicity(name, curve)
        if name not in stages:
            messages += _large_eps(repr(name), curve[-1], clean_accuracy)
        elif name in finals:  # a cascade's stages report the accuracy after them: one message, for the last
            order = " → ".join(dict.fromkeys(r.attack for r in results if r.stage is not None))
            messages += _large_eps(f"the cascade {order}", curve[-1], clean_accuracy)
    for eps, group in budget_groups(results):
        messages += _masking(eps, group)
    return messages


def upper_bound_notes(results: list[AttackResult]) -> list[str]:
    """One note when every attack follows a loss gradient: the robust accuracy is an upper bound."""
    if not results or any(r.family != GRADIENT for r in results):
        return []
    return [
        f"every attack here follows a loss gradient ({', '.join(dict.fromkeys(r.attack for r in results))}): the "
        "robust accuracy is an upper bound on the true one, which gradient masking can hide from such attacks; "
        "add gradient-free attacks: robustlr evaluate --suite autoattack (evaluate(..., suite='autoattack'))"
    ]


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


def _large_eps(label: str, last: AttackResult, clean_accuracy: float) -> list[str]:
    """A message if an accurate model keeps more than :data:`BROKEN_ROBUST` robust accuracy at the largest ε
    (``label``: the attack's quoted name, or the cascade's)."""
    if clean_accuracy <= UNDEFENDED_CLEAN or last.eps == 0 or last.robust_accuracy <= BROKEN_ROBUST:
        return []
    return [
        f"{label} leaves {last.robust_accuracy:.4g} robust accuracy at its largest ε={last.eps:.4g} "
        f"(clean accuracy {clean_accuracy:.4g}); if the model was not trained to be robust, an attack at a "
        f"large budget should bring it to at most {BROKEN_ROBUST:.0%}: this may indicate gradient masking or "
        "an ε grid that is too small (for an adversarially trained model it can be expected)"
    ]


def _masking(eps: float, group: list[AttackResult]) -> list[str]:
    """A message if the boundary / score attacks of one (ε, norm) group break at least one point and at least
    :data:`MASKING_SHARE` of the points its gradient attacks left robust."""
    gradient = [r for r in group if r.family == GRADIENT]
    others = [r for r in group if r.family in (BOUNDARY, SCORE)]
    if not gradient or not others:
        return []
    left = torch.stack([r.robust for r in gradient]).all(dim=0)
    broken = left & ~torch.stack([r.robust for r in others]).all(dim=0)
    count, kept = int(broken.sum()), int(left.sum())
    if count < 1 or count < MASKING_SHARE * kept:
        return []
    breakers = [r.attack for r in others if bool((left & ~r.robust).any())]
    worst = min(r.robust_accuracy for r in gradient)
    return [
        f"gradient masking likely at ε={eps:g} ({group[0].norm}): {', '.join(breakers)} broke {count} of the {kept} "
        f"points that the gradient attacks ({', '.join(r.attack for r in gradient)}) left robust; report the "
        f"suite's number (the worst case), not PGD's ({worst:.4g})"
    ]
