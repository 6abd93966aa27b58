"""Spectral study of attack perturbations on a data set (the LoRa-PGD paper's observation, §2 of its brief).

For each attack, on the same images: the relative shift of the image's singular values
(:func:`robustlr.analysis.relative_spectrum_shift`), the mean energy curve ``E_r`` of the perturbation
``δ = x_adv − x`` over ``r``, its mean effective rank, stable rank and nuclear norm per channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analysis import effective_rank, energy_curve, nuclear_norm, relative_spectrum_shift, stable_rank
from ..checks import check_int
from .data import check_batch
from .guards import check_adversarial, check_model_finite
from .specs import AttackFn, declared_norm, own_eps

__all__ = ["SpectrumStats", "perturbation_spectrum"]


@dataclass
class SpectrumStats:
    """Spectral statistics of one attack's perturbations (means over images and channels)."""

    attack: str
    shift: list[float]
    shift_fraction: list[float]
    energy_curve: list[float]
    effective_rank: float
    stable_rank: float
    nuclear_norm: float
    n: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: undefined values (NaN) become ``None``."""
        clean = lambda v: None if isinstance(v, float) and v != v else v  # noqa: E731
        return {k: [clean(e) for e in v] if isinstance(v, list) else clean(v) for k, v in self.__dict__.items()}


def _nanmean(t: torch.Tensor) -> float:
    return float(torch.nanmean(t.double()))


def perturbation_spectrum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, AttackFn],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> list[SpectrumStats]:
    """Run every attack on ``(x, y)`` and summarise the singular spectra of its perturbations.

    Checked before any attack runs: ``x`` float images ``(N, C, H, W)`` with ``N`` ≥ 1 integer labels ``y``,
    ``attacks`` a non-empty mapping of names to callables, ``batch_size`` an integer ≥ 1, a model without NaN/inf
    weights.  Every returned batch is checked as in :func:`robustlr.evaluate.evaluate`
    (:func:`~robustlr.evaluation.guards.check_adversarial`, at the attack's own ``eps`` and ``norm``).
    """
    x, y = check_batch((x, y))
    if x.shape[0] == 0:
        raise ValueError("x and y must hold at least one sample, got none")
    batch_size = check_int("batch_size", batch_size, 1)
    if not isinstance(attacks, Mapping) or not attacks:
        raise ValueError(f"attacks must be a non-empty mapping name -> attack, got {attacks!r}")
    for name, attack in attacks.items():
        if not callable(attack):
            raise ValueError(f"attacks[{name!r}] must be a callable atk(x, y) -> x_adv, got {type(attack).__name__}")
    check_model_finite(model)
    out = []
    for name, attack in attacks.items():
        what, eps, norm = f"attacks[{name!r}]", own_eps(attack), declared_norm(attack)
        batches = list(zip(x.split(batch_size), y.split(batch_size)))
        adv = torch.cat([check_adversarial(attack(xb, yb), xb, what, eps, norm).to(dtype=x.dtype) for xb, yb in tqdm(
            batches, desc=f"spectrum {name}", disable=not progress, leave=False)])
        delta = adv - x
        a, p = relative_spectrum_shift(x, adv)
        out.append(SpectrumStats(
            attack=name,
            shift=a.tolist(),
            shift_fraction=p.tolist(),
            energy_curve=energy_curve(delta).tolist(),
            effective_rank=_nanmean(effective_rank(delta)),
            stable_rank=_nanmean(stable_rank(delta)),
            nuclear_norm=_nanmean(nuclear_norm(delta)),
            n=len(x),
        ))
    return out
