"""Attacks by name, as the CLI, the demo and the experiment configs refer to them.

=================  ===================================================================  =======  ==============
name               attack                                                               norm     default work
=================  ===================================================================  =======  ==============
``fgsm``           :class:`FGSM` (sign step of size ε)                                  L∞       1 step
``fgm-l2``         :class:`FGSM` with ``norm="l2"`` (L2-normalised step)                L2       1 step
``pgd-linf``       :class:`PGD`, α = 2.5ε/steps, random start                           L∞       10 steps
``pgd-l2``         :class:`PGD`, α = 1.8ε/steps, random start                           L2       10 steps
``lora-pgd``       :class:`LoRaPGD` (the paper's attack), per rank                      L2       10 steps
``lora-pgd-linf``  :class:`LoRaPGD` with ``norm="linf"`` (extension), per rank          L∞       10 steps
``lora-apgd``      :class:`LoRaAPGD` (LoRa-PGD's factors, APGD's schedule), per rank    L2       100 steps
``lora-apgd-linf`` :class:`LoRaAPGD` with ``norm="linf"``, per rank                     L∞       100 steps
``rank-pgd``       :class:`RankProjectedPGD` (PGD-L2 truncated at the end)              L2       10 steps
``apgd-ce-<n>``    :class:`APGD` on the cross-entropy, ρ = 0.75                         <n>      100 steps
``apgd-dlr-<n>``   :class:`APGD` on the DLR loss, ρ = 0.75                              <n>      100 steps
``apgd-t-<n>``     :class:`APGDT`: targeted DLR over the 9 most likely other classes    <n>      100 steps
``fab-t-<n>``      :class:`FAB` targeted (FAB-T) over the 9 most likely other classes   <n>      100 steps
``square-<n>``     :class:`Square`, p_init = 0.8                                        <n>      5000 queries
=================  ===================================================================  =======  ==============

AutoAttack's attacks (Croce & Hein, ICML 2020: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``) work
in either norm; like ``pgd-linf`` / ``pgd-l2`` their names here carry the threat model, ``<n>`` = ``linf`` or
``l2`` (``apgd-ce-linf``, ``square-l2``), so that every name has one norm (:func:`attack_norm`) and the CLI
groups attacks by it.  Their defaults are AutoAttack's standard version: 100 steps and 1 restart (APGD-CE,
APGD-T per target class, FAB-T per target class), 9 target classes, Square 5000 queries from ``p_init = 0.8``.
``steps`` and ``restarts`` change them where they mean something: ``steps`` for every iterative attack (FGSM and
Square take none), ``restarts`` for all but FGSM, ``queries`` for Square only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_flag, check_int
from .apgd import APGD
from .apgd_targeted import APGDT
from .base import Attack
from .fab import FAB
from .fgsm import FGSM
from .lora_apgd import LoRaAPGD
from .lora_pgd import LoRaPGD
from .pgd import PGD
from .projections import NORMS
from .rank_projected import RankProjectedPGD
from .square import Square

__all__ = ["ATTACK_NAMES", "AUTOATTACK_ATTACKS", "RANKED_ATTACKS", "DEFAULT_STEPS", "EARLY_STOPPING", "attack_family", "attack_norm", "normed_name",
           "build_attack"]

AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
"""AutoAttack's names of its attacks; the registry's are ``<name>-linf`` and ``<name>-l2`` (:func:`normed_name`)."""

_NORMS = {"fgsm": "linf", "fgm-l2": "l2", "pgd-linf": "linf", "pgd-l2": "l2",
          "lora-pgd": "l2", "lora-pgd-linf": "linf", "lora-apgd": "l2", "lora-apgd-linf": "linf", "rank-pgd": "l2",
          **{f"{name}-{norm}": norm for name in AUTOATTACK_ATTACKS for norm in NORMS}}
ATTACK_NAMES: tuple[str, ...] = tuple(_NORMS)
RANKED_ATTACKS = ("lora-pgd", "lora-pgd-linf", "lora-apgd", "lora-apgd-linf", "rank-pgd")
"""Attacks that take a ``rank``: one instance per requested rank."""
EARLY_STOPPING = ("apgd", "fab")
"""Families (first word of the name) whose attacks take ``early_stop`` (:func:`build_attack`)."""
DEFAULT_STEPS = {"pgd": 10, "lora": 10, "lora-apgd": 100, "rank": 10, "apgd": 100, "fab": 100}
"""Steps of the iterative attacks when none are given, by family (:func:`attack_family`; module table)."""


def attack_norm(name: str) -> str:
    """The threat model (``"linf"`` or ``"l2"``) of a named attack."""
    if name not in _NORMS:
        raise ValueError(f"attack must be one of {ATTACK_NAMES}, got {name!r}")
    return _NORMS[name]


def attack_family(name: str) -> str:
    """The family of a named attack: the first word of its name, ``"lora-apgd"`` for LoRa-APGD."""
    attack_norm(name)
    return "lora-apgd" if name.startswith("lora-apgd") else name.split("-")[0]


def normed_name(name: str, norm: str) -> str:
    """The registry's name of AutoAttack's attack ``name`` (one of :data:`AUTOATTACK_ATTACKS`) in ``norm``."""
    if name not in AUTOATTACK_ATTACKS:
        raise ValueError(f"name must be one of AutoAttack's attacks {AUTOATTACK_ATTACKS}, got {name!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return f"{name}-{norm}"


def build_attack(
    name: str,
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    *,
    rank: int | float | None = None,
    steps: int | None = None,
    restarts: int = 1,
    queries: int | None = None,
    seed: int | None = 0,
    loss_scale: float | None = None,
    early_stop: bool = False,
) -> Attack:
    """Construct the attack ``name`` (see the module table) at budget ``eps``.

    ``loss_scale`` is passed to every attack (see :class:`~robustlr.attacks.base.Attack`).
    ``rank`` is required for the ranked attacks and refused for the others; ``queries`` (default 5000) is
    Square's and refused for the others.  ``steps`` (default: the table's) and ``restarts`` are checked for
    every attack (integers >= 1); FGSM/FGM ignore both, Square ignores ``steps``.  ``early_stop``
    (:mod:`~robustlr.attacks.early_stop`) is for the attacks of :data:`EARLY_STOPPING` (Square always stops on
    the points it fools) and refused for the others.  Numbers may be of any real
    (``eps``, a fraction ``rank``) or integer (``steps``, ``restarts``, ``queries``, ``seed``, an int ``rank``)
    type, numpy scalars included; the constructors check them.
    """
    norm = attack_norm(name)
    if steps is not None:
        check_int("steps", steps, 1)
    check_int("restarts", restarts, 1)
    if name in RANKED_ATTACKS and rank is None:
        raise ValueError(f"attack {name!r} needs a rank (an int or a fraction in (0, 1]), got None")
    if name not in RANKED_ATTACKS and rank is not None:
        raise ValueError(f"attack {name!r} takes no rank, got rank={rank!r}; ranked attacks: {RANKED_ATTACKS}")
    family = attack_family(name)
    if family != "square" and queries is not None:
        raise ValueError(f"attack {name!r} takes no queries (only square-linf / square-l2 do), got queries={queries!r}")
    if check_flag("early_stop", early_stop) and family not in EARLY_STOPPING:
        raise ValueError(f"attack {name!r} has no early stop, got early_stop=True; attacks with one: "
                         f"{', '.join(f'{f}-*' for f in EARLY_STOPPING)} (square-* always stops early)")
    common = {"seed": seed, "loss_scale": loss_scale}
    stops = {"early_stop": early_stop}
    if family in ("fgsm", "fgm"):
        return FGSM(model, eps, norm, **common)
    if family == "square":
        return Square(model, eps, norm, queries=5000 if queries is None else queries, p_init=0.8, restarts=restarts,
                      **common)
    steps = DEFAULT_STEPS[family] if steps is None else steps
    if family == "pgd":
        return PGD(model, eps, norm, steps=steps, restarts=restarts, **common)
    if family == "lora-apgd":
        return LoRaAPGD(model, eps, rank=rank, norm=norm, steps=steps, restarts=restarts, rho=0.75, **common)
    if family == "lora":
        return LoRaPGD(model, eps, rank=rank, norm=norm, steps=steps, restarts=restarts, **common)
    if family == "rank":
        return RankProjectedPGD(model, eps, rank=rank, norm=norm, steps=steps, restarts=restarts, **common)
    if family == "fab":
        return FAB(model, eps, norm, steps=steps, targeted=True, n_target_classes=9, restarts=restarts, **common,
                   **stops)
    if name.startswith("apgd-t-"):
        return APGDT(model, eps, norm, steps=steps, n_target_classes=9, restarts=restarts, rho=0.75, **common,
                     **stops)
    loss = "dlr" if name.startswith("apgd-dlr-") else "ce"
    return APGD(model, eps, norm, steps=steps, loss=loss, restarts=restarts, rho=0.75, **common, **stops)
