"""Suites of attacks for :func:`robustlr.evaluate.evaluate`: ``evaluate(..., suite=..., norm=...)``.

===============  =========================================================================  =====================
suite            attacks, in the order the cascade runs them, at every ε of the grid       what it is
===============  =========================================================================  =====================
``autoattack``   APGD-CE → APGD-T → FAB-T → Square (``apgd-ce-<n>``, ``apgd-t-<n>``,      AutoAttack's standard
                 ``fab-t-<n>``, ``square-<n>``; 100 steps, 9 targets, 5000 queries)          version (Croce & Hein,
                                                                                            ICML 2020)
``fast``         PGD → LoRa-PGD → APGD-CE (``pgd-<n>``, ``lora-pgd`` / ``lora-pgd-linf``     a quick check by
                 at rank 0.1 of the image side, ``apgd-ce-<n>``)                            gradient attacks only
===============  =========================================================================  =====================

``<n>`` is the suite's threat model, ``norm="linf"`` or ``"l2"``; the attacks are the registry's
(:mod:`robustlr.attacks.registry`) with its defaults, seed 0.  A suite runs as a cascade (each attack only on the
points still robust), which gives the same worst case as running every attack on every point, faster; for the
same reason its APGD, APGD-T and FAB stop early on the points they break (:mod:`robustlr.attacks.early_stop`).  The
``fast`` suite has no gradient-free attack: its number is an upper bound like PGD's, and the evaluation says so.
:func:`suite_attacks` builds a suite with other steps, restarts, queries, ranks or seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import torch
from torch import nn

from ..attacks.projections import NORMS
from ..attacks.registry import EARLY_STOPPING, RANKED_ATTACKS, attack_family, build_attack, normed_name
from .specs import AttackFn, AttackSpec, at_eps

__all__ = ["SUITES", "FAST_RANK", "suite_names", "suite_attacks", "with_suite"]

SUITES = ("autoattack", "fast")
"""The suites, by name (module table)."""
FAST_RANK = 0.1
"""Rank of the ``fast`` suite's LoRa-PGD: a fraction of the image side (3 for 28×28 images)."""


def suite_names(suite: str, norm: str) -> list[str]:
    """The registry names of the attacks of ``suite`` in ``norm``, in their order (module table)."""
    if not isinstance(suite, str) or suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES} or None, got {suite!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} for suite={suite!r} (the threat model it attacks in), "
                         f"got {norm!r}")
    if suite == "autoattack":
        return [normed_name(name, norm) for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    return [f"pgd-{norm}", "lora-pgd" if norm == "l2" else "lora-pgd-linf", normed_name("apgd-ce", norm)]


def suite_attacks(
    suite: str,
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    norm: str,
    *,
    ranks: Sequence[int | float] = (FAST_RANK,),
    steps: int | None = None,
    restarts: int = 1,
    queries: int | None = None,
    seed: int | None = 0,
) -> dict[str, AttackSpec]:
    """The attacks of ``suite`` in ``norm`` as ``name -> at_eps(factory)``, in the suite's order, for
    :func:`~robustlr.evaluate.evaluate`.  The low-rank attack gets one entry per rank of ``ranks``, named
    ``"<name> r=<rank>"``; ``steps`` (default: each attack's, see the registry), ``restarts``, ``queries``
    (Square's; ignored by a suite without Square) and ``seed`` go to every attack that takes them.  Every
    argument is checked now, by building each attack once at ε = 1."""
    names = suite_names(suite, norm)
    if any(name in RANKED_ATTACKS for name in names) and (isinstance(ranks, (str, bytes)) or not list(ranks)):
        raise ValueError(f"ranks must be a non-empty sequence of ranks for suite={suite!r}, got {ranks!r}")
    specs: dict[str, AttackSpec] = {}
    for name in names:
        for rank in (ranks if name in RANKED_ATTACKS else [None]):
            def factory(eps: float, name: str = name, rank: int | float | None = rank) -> AttackFn:
                return build_attack(name, model, eps, rank=rank, steps=steps, restarts=restarts,
                                    queries=queries if name.startswith("square") else None, seed=seed,
                                    early_stop=attack_family(name) in EARLY_STOPPING)

            factory(1.0)
            specs[name if rank is None else f"{name} r={rank}"] = at_eps(factory)
    return specs


def with_suite(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    attacks: Mapping[str, AttackSpec | AttackFn] | None,
    suite: str | None,
    norm: str | None,
    eps_grid: object,
) -> Mapping[str, AttackSpec | AttackFn]:
    """The attacks :func:`~robustlr.evaluate.evaluate` runs: ``attacks`` alone, or the suite's
    (:func:`suite_attacks` with its defaults) followed by ``attacks``.

    Raises ``ValueError`` for an unknown suite (naming the allowed ones), a suite without ``norm`` or
    ``eps_grid``, a ``norm`` without a suite (it is a suite's threat model: other attacks declare their own),
    neither attacks nor a suite, and a name of ``attacks`` that is already one of the suite's.
    """
    if suite is None:
        if norm is not None:
            raise ValueError(f"norm is the threat model of a suite: give suite={SUITES[0]!r} or {SUITES[1]!r} with it, "
                             f"or drop it (attacks declare their own norm); got norm={norm!r} without a suite")
        if attacks is None:
            raise ValueError(f"attacks must be given (a mapping name -> at_eps(factory) or attack), or a suite "
                             f"(suite= one of {SUITES}, with norm=); got neither")
        return attacks
    suite_names(suite, norm)  # type: ignore[arg-type]
    if eps_grid is None:
        raise ValueError(f"eps_grid must be given with suite={suite!r} (its attacks run at every ε of it), got None")
    specs = suite_attacks(suite, model, norm)  # type: ignore[arg-type]
    if attacks is None:
        return specs
    if not isinstance(attacks, Mapping):
        raise ValueError(f"attacks must be a mapping name -> at_eps(factory) or attack (run after the suite), "
                         f"got {type(attacks).__name__}")
    clash = [name for name in attacks if name in specs]
    if clash:
        raise ValueError(f"attacks must not reuse the names of suite={suite!r} ({list(specs)}): got {clash}; "
                         "rename them")
    return {**specs, **attacks}
