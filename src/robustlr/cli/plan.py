"""Turn attack options into evaluation plans: one per threat model, each with its ε grid.

Every value is checked here under the option that gave it, before any attack runs: the budgets of a norm
come from ``--eps-<norm>``, else ``--eps``, else the command's defaults, and must be finite in the images'
dtype; the ranks of ``--rank`` must fit the images (an int at most min(H, W)).

``--suite NAME`` (``robustlr evaluate`` / ``attack``) puts the suite's attacks first in the plan of every norm of
``--norm`` (default: ``linf``, AutoAttack's and RobustBench's first threat model), with ``--steps``,
``--restarts``, ``--queries``, ``--rank`` and ``--seed``; the attacks of ``--attack`` follow in the plan of their
own norm (without ``--attack`` a suite runs alone).  A plan with a suite, or every plan with ``--cascade``, is
evaluated as a cascade.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import RANKED_ATTACKS, attack_norm, build_attack
from ..attacks.precision import check_budget
from ..attacks.projections import resolve_rank
from ..data import ImageDataset
from ..evaluate import AttackSpec, at_eps
from ..evaluation.suites import FAST_RANK, suite_attacks, suite_names
from .options import CliError
from .setup import cli_names

__all__ = ["Plan", "plan_attacks", "budgets", "check_budgets", "DEFAULT_EPS", "DEFAULT_RANKS"]

DEFAULT_EPS = {"linf": [0.0, 0.02, 0.05, 0.1, 0.2], "l2": [0.0, 0.5, 1.0, 2.0, 3.0]}
"""ε grids used when neither ``--eps`` nor ``--eps-<norm>`` is given (pixel units, images in [0, 1])."""
DEFAULT_RANKS: list[int | float] = [0.1, 0.3, 0.5]

_ATTACK_OPTIONS = {"rank": "--rank", "eps": "--eps", "steps": "--steps", "restarts": "--restarts", "seed": "--seed",
                   "queries": "--queries"}
"""The library's names of the attack arguments and the options that give them."""


@dataclass
class Plan:
    """The attacks of one threat model and the budgets to evaluate them at (given by ``eps_option``)."""

    norm: str
    eps: list[float]
    attacks: dict[str, AttackSpec]
    eps_option: str = "--eps"
    cascade: bool = False


def _label(name: str, rank: int | float | None) -> str:
    return name if rank is None else f"{name} r={rank}"


def budgets(args: argparse.Namespace, norm: str, defaults: Mapping[str, Sequence[float]]) -> tuple[str, list[float]]:
    """The option that gives the budgets of ``norm`` (``--eps-<norm>``, else ``--eps``, else ``"default"``)
    and its values, as given."""
    for option in (f"--eps-{norm}", "--eps"):
        values = getattr(args, option[2:].replace("-", "_"), None)
        if values:
            return option, list(values)
    return "default", list(defaults[norm])


def check_budgets(option: str, values: Sequence[float], dtype: torch.dtype, norm: str) -> None:
    """Check that every budget of ``option`` is representable for ``norm`` in the images' ``dtype``
    (:func:`robustlr.attacks.precision.check_budget`: ``--eps 1e39`` overflows float32 images); the parser has
    already checked that each is finite and >= 0."""
    if not dtype.is_floating_point:
        return
    for value in values:
        check_budget(option, value, dtype, f"the images are {str(dtype).removeprefix('torch.')}", norm)


def plan_attacks(args: argparse.Namespace, model: nn.Module, data: ImageDataset,
                 defaults: Mapping[str, Sequence[float]] = DEFAULT_EPS) -> list[Plan]:
    """Group the requested attacks by norm, a suite's first; ranked attacks get one entry per ``--rank``.

    Raises:
        CliError: naming the option: a budget not finite in the images' dtype (``--eps``/``--eps-<norm>``),
            a rank that does not fit the images (``--rank``), ``--norm`` without ``--suite``, an ``--attack`` that
            is already in the suite, or any argument the attack refuses.
    """
    suite, norms = getattr(args, "suite", None), getattr(args, "norm", None)
    steps = getattr(args, "steps", None)  # absent: each attack's default (--steps is not set by default)
    if norms and suite is None:
        raise CliError(f"--norm is the threat model of --suite: give --suite with it, or drop it (each --attack "
                       f"has its own norm); got --norm {' '.join(norms)} without --suite")
    names = list(dict.fromkeys(args.attack or ([] if suite else args.default_attacks)))
    suite_norms = list(dict.fromkeys(norms or ["linf"])) if suite else []
    ranks, suite_ranks = args.rank or DEFAULT_RANKS, args.rank or [FAST_RANK]
    used = [ranks] if any(name in RANKED_ATTACKS for name in names) else []
    if any(name in RANKED_ATTACKS for norm in suite_norms for name in suite_names(suite, norm)):
        used.append(suite_ranks)
    side = min(data.image_shape[1:])
    for rank in dict.fromkeys(rank for group in used for rank in group):
        with cli_names(_ATTACK_OPTIONS):
            resolve_rank(rank, side, name="--rank")
    plans: dict[str, Plan] = {}

    def plan_of(norm: str) -> Plan:
        if norm not in plans:
            option, eps = budgets(args, norm, defaults)
            with cli_names({}):
                check_budgets(option, eps, data[:1][0].dtype, norm)
            plans[norm] = Plan(norm, sorted(set(eps)), {}, option, cascade=bool(getattr(args, "cascade", False)))
        return plans[norm]

    for norm in suite_norms:
        plan = plan_of(norm)
        with cli_names(_ATTACK_OPTIONS, f"--suite {suite}"):
            plan.attacks.update(suite_attacks(suite, model, norm, ranks=suite_ranks, steps=steps,
                                              restarts=args.restarts, queries=args.queries, seed=args.seed))
        plan.cascade = True
    for name in names:
        plan = plan_of(attack_norm(name))
        for rank in (ranks if name in RANKED_ATTACKS else [None]):
            label = _label(name, rank)
            if label in plan.attacks:
                raise CliError(f"--attack {name}: {label!r} is already in --suite {suite} ({', '.join(plan.attacks)}); "
                               "drop it")

            def factory(e: float, name: str = name, rank: int | float | None = rank):
                return build_attack(name, model, e, rank=rank, steps=steps, restarts=args.restarts, seed=args.seed,
                                    queries=args.queries if name.startswith("square") else None)

            with cli_names(_ATTACK_OPTIONS):
                factory(max(plan.eps) or 1.0)  # validates the arguments now, before any work
            plan.attacks[label] = at_eps(factory)
    return list(plans.values())
