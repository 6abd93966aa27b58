"""Attacks by name, as the CLI, the demo and the experiment configs refer to them.

=================  ==========================================================  =======
name               attack                                                      norm
=================  ==========================================================  =======
``fgsm``           :class:`FGSM` (sign step of size ε)                          L∞
``fgm-l2``         :class:`FGSM` with ``norm="l2"`` (L2-normalised step)        L2
``pgd-linf``       :class:`PGD`, α = 2.5ε/steps, random start                   L∞
``pgd-l2``         :class:`PGD`, α = 1.8ε/steps, random start                   L2
``lora-pgd``       :class:`LoRaPGD` (the paper's attack), per rank              L2
``lora-pgd-linf``  :class:`LoRaPGD` with ``norm="linf"`` (extension), per rank  L∞
``rank-pgd``       :class:`RankProjectedPGD` (PGD-L2 truncated at the end)      L2
=================  ==========================================================  =======
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_int
from .base import Attack
from .fgsm import FGSM
from .lora_pgd import LoRaPGD
from .pgd import PGD
from .rank_projected import RankProjectedPGD

__all__ = ["ATTACK_NAMES", "RANKED_ATTACKS", "attack_norm", "build_attack"]

_NORMS = {"fgsm": "linf", "fgm-l2": "l2", "pgd-linf": "linf", "pgd-l2": "l2",
          "lora-pgd": "l2", "lora-pgd-linf": "linf", "rank-pgd": "l2"}
ATTACK_NAMES: tuple[str, ...] = tuple(_NORMS)
RANKED_ATTACKS = ("lora-pgd", "lora-pgd-linf", "rank-pgd")
"""Attacks that take a ``rank``: one instance per requested rank."""


def attack_norm(name: str) -> str:
    """The threat model (``"linf"`` or ``"l2"``) of a named attack."""
    if name not in _NORMS:
        raise ValueError(f"attack must be one of {ATTACK_NAMES}, got {name!r}")
    return _NORMS[name]


def build_attack(
    name: str,
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    *,
    rank: int | float | None = None,
    steps: int = 10,
    restarts: int = 1,
    seed: int | None = 0,
    loss_scale: float | None = None,
) -> Attack:
    """Construct the attack ``name`` (see the module table) at budget ``eps``.

    ``loss_scale`` is passed to every attack (see :class:`~robustlr.attacks.base.Attack`).
    ``rank`` is required for the ranked attacks and refused for the others; ``steps`` and ``restarts``
    are checked for every attack (integers >= 1) and ignored by the single-step FGSM/FGM.  Numbers may be
    of any real (``eps``, a fraction ``rank``) or integer (``steps``, ``restarts``, ``seed``, an int
    ``rank``) type, numpy scalars included; the constructors check them.
    """
    norm = attack_norm(name)
    check_int("steps", steps, 1)
    check_int("restarts", restarts, 1)
    if name in RANKED_ATTACKS and rank is None:
        raise ValueError(f"attack {name!r} needs a rank (an int or a fraction in (0, 1]), got None")
    if name not in RANKED_ATTACKS and rank is not None:
        raise ValueError(f"attack {name!r} takes no rank, got rank={rank!r}; ranked attacks: {RANKED_ATTACKS}")
    if name in ("fgsm", "fgm-l2"):
        return FGSM(model, eps, norm, seed=seed, loss_scale=loss_scale)
    if name.startswith("pgd"):
        return PGD(model, eps, norm, steps=steps, restarts=restarts, seed=seed, loss_scale=loss_scale)
    if name.startswith("lora"):
        return LoRaPGD(model, eps, rank=rank, norm=norm, steps=steps, restarts=restarts, seed=seed,
                       loss_scale=loss_scale)
    return RankProjectedPGD(model, eps, rank=rank, norm=norm, steps=steps, restarts=restarts, seed=seed,
                            loss_scale=loss_scale)
