"""Adversarial attacks: FGSM, PGD, LoRa-PGD and rank-projected PGD, over one projections module."""

from .base import LOSSES, Attack
from .fgsm import FGSM
from .lora_pgd import INITS, LoRaPGD
from .pgd import PGD, default_alpha
from .rank_projected import RankProjectedPGD

__all__ = ["Attack", "FGSM", "PGD", "LoRaPGD", "RankProjectedPGD", "default_alpha", "LOSSES", "INITS"]
