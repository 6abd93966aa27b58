"""Turn attack options into evaluation plans: one per threat model, each with its ε grid."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from torch import nn

from ..attacks import RANKED_ATTACKS, attack_norm, build_attack
from ..evaluate import AttackSpec, at_eps
from .options import CliError

__all__ = ["Plan", "plan_attacks", "DEFAULT_EPS", "DEFAULT_RANKS"]

DEFAULT_EPS = {"linf": [0.0, 0.02, 0.05, 0.1, 0.2], "l2": [0.0, 0.5, 1.0, 2.0, 3.0]}
"""ε grids used when neither ``--eps`` nor ``--eps-<norm>`` is given (pixel units, images in [0, 1])."""
DEFAULT_RANKS: list[int | float] = [0.1, 0.3, 0.5]


@dataclass
class Plan:
    """The attacks of one threat model and the budgets to evaluate them at."""

    norm: str
    eps: list[float]
    attacks: dict[str, AttackSpec]


def _label(name: str, rank: int | float | None) -> str:
    return name if rank is None else f"{name} r={rank}"


def plan_attacks(args: argparse.Namespace, model: nn.Module) -> list[Plan]:
    """Group the requested attacks by norm; ranked attacks get one entry per ``--rank``."""
    names = args.attack or args.default_attacks
    ranks = args.rank or DEFAULT_RANKS
    for value, option in ((args.steps, "--steps"), (args.restarts, "--restarts")):
        if value < 1:
            raise CliError(f"{option} must be an int >= 1, got {value}")
    plans: dict[str, Plan] = {}
    for name in dict.fromkeys(names):
        norm = attack_norm(name)
        if norm not in plans:
            eps = getattr(args, f"eps_{norm}") or args.eps or DEFAULT_EPS[norm]
            plans[norm] = Plan(norm, sorted(set(eps)), {})
        for rank in (ranks if name in RANKED_ATTACKS else [None]):
            def factory(e: float, name: str = name, rank: int | float | None = rank):
                return build_attack(name, model, e, rank=rank, steps=args.steps, restarts=args.restarts, seed=args.seed)

            factory(1.0)  # validates the arguments now, before any work
            plans[norm].attacks[_label(name, rank)] = at_eps(factory)
    return list(plans.values())
