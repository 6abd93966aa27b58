"""Joining the evaluations of consecutive shards of a test set into the evaluation of the whole.

Every attack seeds each sample from (seed, restart, the sample's bytes), so a sample's adversarial example does
not depend on the batch or shard it is in: the per-sample masks of the shards, concatenated in order, are the
masks a single process computes. Counts follow from the masks; the mean perturbation norms are averaged with
the shard sizes as weights (in a cascade, the numbers of points each shard's stage attacked); ``seconds`` is the slowest shard's (the processes run in parallel). The sanity
checks that depend on the accuracies (monotonicity in ε, large-ε accuracy) are recomputed on the whole; the
per-sample ones (zero input gradients, probability outputs) are kept from the shard that raised them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from robustlr.evaluation.result import (
    AttackResult,
    EvaluationResult,
    fixed_worst_case,
    fraction,
    worst_cases_per_eps,
)
from robustlr.evaluation.sanity import sanity_warnings

__all__ = ["merge_evaluations"]


def _merge_attack(parts: Sequence[AttackResult], sizes: Sequence[int]) -> AttackResult:
    """One attack run over all shards.  The mean norms are weighted by each shard's number of attacked points (its
    size, or in a cascade its ``attacked`` count); shards that attacked nothing (NaN means) carry no weight."""
    first = parts[0]
    robust = torch.cat([part.robust for part in parts])
    attacked = None if first.attacked is None else sum(part.attacked or 0 for part in parts)
    weights = sizes if first.attacked is None else [part.attacked or 0 for part in parts]

    def mean(attribute: str) -> float:
        pairs = [(getattr(part, attribute), w) for part, w in zip(parts, weights)]
        pairs = [(value, w) for value, w in pairs if w and not math.isnan(value)]
        total = sum(w for _, w in pairs)
        return sum(value * w for value, w in pairs) / total if total else math.nan

    return AttackResult(
        attack=first.attack, eps=first.eps, norm=first.norm, kind=first.kind, attack_repr=first.attack_repr,
        robust_accuracy=fraction(robust), mean_l2=mean("mean_l2"), mean_linf=mean("mean_linf"),
        mean_nuclear=mean("mean_nuclear"), seconds=max(part.seconds for part in parts),
        correct=torch.cat([part.correct for part in parts]), robust=robust,
        attacked=attacked, stage=first.stage, family=first.family,
    )


def _accuracy_checks(result: EvaluationResult) -> list[str]:
    return sanity_warnings(result.n, result.clean_accuracy, result.attacks, zero_gradients=0, probabilities=False)


def _per_sample_checks(part: EvaluationResult) -> list[str]:
    recomputed = set(_accuracy_checks(part))
    return [message for message in part.warnings if message not in recomputed]


def merge_evaluations(parts: Sequence[EvaluationResult]) -> EvaluationResult:
    """The evaluation of the concatenation of the shards ``parts`` (in order; same attacks in each).

    Raises:
        ValueError: for no parts, or parts whose attack runs differ.
    """
    if not parts:
        raise ValueError("parts must hold at least one shard's EvaluationResult; got none")
    if len(parts) == 1:
        return parts[0]
    runs = [(r.attack, r.eps, r.norm) for r in parts[0].attacks]
    if any([(r.attack, r.eps, r.norm) for r in part.attacks] != runs for part in parts):
        raise ValueError(f"parts must evaluate the same attack runs {runs}; got {[len(p.attacks) for p in parts]} runs")
    sizes = [part.n for part in parts]
    clean = torch.cat([part.clean_correct for part in parts])
    attacks = [_merge_attack([part.attacks[i] for part in parts], sizes) for i in range(len(runs))]
    merged = EvaluationResult(
        n=clean.numel(), clean_accuracy=fraction(clean), device=parts[0].device,
        seconds=max(part.seconds for part in parts), attacks=attacks, worst_case=worst_cases_per_eps(attacks),
        worst_case_fixed=fixed_worst_case(attacks), warnings=[], clean_correct=clean,
        notes=list(parts[0].notes), cascade=parts[0].cascade,
    )
    local = [f"shard {index} ({part.n} samples): {message}" for index, part in enumerate(parts)
             for message in _per_sample_checks(part)]
    merged.warnings = _accuracy_checks(merged) + local
    return merged
