"""Adversarial attacks: FGSM, PGD, LoRa-PGD and rank-projected PGD, over one projections module."""

from .base import LOSSES, Attack
from .fgsm import FGSM
from .lora_pgd import INITS, LoRaPGD
from .pgd import PGD, default_alpha
from .rank_projected import RankProjectedPGD
from .registry import ATTACK_NAMES, RANKED_ATTACKS, attack_norm, build_attack

__all__ = ["Attack", "FGSM", "PGD", "LoRaPGD", "RankProjectedPGD", "default_alpha", "LOSSES", "INITS",
           "ATTACK_NAMES", "RANKED_ATTACKS", "attack_norm", "build_attack"]
