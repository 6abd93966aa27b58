"""Adversarial attacks: FGSM, PGD, APGD, APGD-T, FAB, Square, LoRa-PGD, LoRa-APGD and rank-projected PGD, over one
projections module."""

from .apgd import APGD
from .apgd_targeted import APGDT
from .base import LOSSES, Attack
from .fab import FAB
from .fgsm import FGSM
from .lora_apgd import LoRaAPGD
from .lora_pgd import INITS, LoRaPGD
from .pgd import PGD, default_alpha
from .rank_projected import RankProjectedPGD
from .square import Square
from .registry import ATTACK_NAMES, RANKED_ATTACKS, attack_norm, build_attack

__all__ = ["Attack", "FGSM", "PGD", "APGD", "APGDT", "FAB", "Square", "LoRaPGD", "LoRaAPGD", "RankProjectedPGD",
           "default_alpha", "LOSSES", "INITS", "ATTACK_NAMES", "RANKED_ATTACKS", "attack_norm", "build_attack"]
