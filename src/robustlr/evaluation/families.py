"""What information an attack uses, for the sanity checks of an evaluation (Croce & Hein, ICML 2020, §4).

=============  =====================================================================  ==========================
family         attacks                                                                fooled by
=============  =====================================================================  ==========================
``gradient``   FGSM, PGD, LoRa-PGD, LoRa-APGD, rank-projected PGD, APGD (CE, DLR),   masked, obfuscated or
               APGD-T (ascend a loss along its input gradient)                        vanishing gradients
``boundary``   FAB (steps to the linearised decision boundary, minimal norm; uses     —
               the gradients' directions, not the scale of a loss)
``score``      Square (random search on the scores: no gradient at all)              —
=============  =====================================================================  ==========================

A model whose gradients are masked defeats the first family only: when the other two break points that the
gradient attacks left robust, the gradient attacks' number overstates the robustness.  An evaluation by gradient
attacks only is an upper bound on the robust accuracy.  Attacks outside this table (a lambda, a torchattacks
attack) are of unknown family and take part in no such check.
"""

from __future__ import annotations

from ..attacks.apgd import APGD
from ..attacks.fab import FAB
from ..attacks.fgsm import FGSM
from ..attacks.lora_pgd import LoRaPGD
from ..attacks.pgd import PGD
from ..attacks.rank_projected import RankProjectedPGD
from ..attacks.square import Square

__all__ = ["GRADIENT", "BOUNDARY", "SCORE", "FAMILIES", "attack_family"]

GRADIENT = "gradient"
BOUNDARY = "boundary"
SCORE = "score"
FAMILIES = (GRADIENT, BOUNDARY, SCORE)

_CLASSES: tuple[tuple[type, str], ...] = (
    (FGSM, GRADIENT), (PGD, GRADIENT), (LoRaPGD, GRADIENT), (RankProjectedPGD, GRADIENT), (APGD, GRADIENT),
    (FAB, BOUNDARY), (Square, SCORE),
)
"""Classes and their families (subclasses included: APGD-T is an APGD, LoRa-APGD a LoRa-PGD, FGSM and
rank-projected PGD are PGDs)."""


def attack_family(attack: object) -> str | None:
    """The family (module table) of ``attack``, by its class (``isinstance``), or ``None`` if unknown."""
    return next((family for cls, family in _CLASSES if isinstance(attack, cls)), None)
