"""Singular spectra of image perturbations: how low-rank an attack is, and which part of the image
spectrum it moves (Savostianova, Zangrando & Tudisco, arXiv 2410.12607, §"observations").

All functions take batches ``(N, C, H, W)`` and work on every channel matrix ``M_{b,c} ∈ R^{H×W}`` with
singular values ``σ₁ ≥ … ≥ σ_n``, ``n = min(H, W)``.  Results are float64 tensors of shape ``(N, C)``
unless said otherwise.  A zero channel has no spectrum to speak of: its energy fraction, effective and
stable ranks are reported as NaN — explicitly, never as a silent 0/0.
"""

from __future__ import annotations

import torch

from ..attacks.projections import channel_svd, resolve_rank

__all__ = [
    "singular_values",
    "nuclear_norm",
    "energy_fraction",
    "energy_curve",
    "effective_rank",
    "stable_rank",
    "relative_spectrum_shift",
]


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """Per-channel singular values ``σ_j(x_{b,c})`` in decreasing order, shape ``(N, C, min(H, W))``."""
    return channel_svd(x)


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-channel nuclear norm ``‖M‖_* = Σ_j σ_j``, shape ``(N, C)``."""
    return singular_values(x).sum(dim=-1)


def _undefined_where_zero(value: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.where(s[..., 0] > 0, value, torch.full_like(value, float("nan")))


def energy_fraction(x: torch.Tensor, rank: int | float) -> torch.Tensor:
    """Fraction of the energy in the top ``r`` singular values, ``E_r = Σ_{j≤r} σ_j² / Σ_j σ_j²``.

    ``E_r = 1 − ‖M − M_r‖_F² / ‖M‖_F²`` (Eckart–Young): the share of the channel that its best rank-r
    approximation keeps.  ``rank``: an int in ``[1, min(H, W)]`` or a fraction in ``(0, 1]``.
    """
    s = singular_values(x)
    r = resolve_rank(rank, s.shape[-1])
    e = s.square()
    return _undefined_where_zero(e[..., :r].sum(-1) / e.sum(-1).clamp_min(1e-300), s)


def energy_curve(x: torch.Tensor) -> torch.Tensor:
    """Mean energy fraction ``E_r`` for every ``r = 1..min(H, W)`` over all non-zero channels, shape ``(n,)``."""
    s = singular_values(x)
    e = s.square()
    curve = e.cumsum(-1) / e.sum(-1, keepdim=True).clamp_min(1e-300)
    keep = s[..., 0] > 0
    return curve[keep].mean(dim=0) if bool(keep.any()) else torch.full((s.shape[-1],), float("nan"), dtype=s.dtype)


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007): ``exp(−Σ_j q_j log q_j)`` with ``q_j = σ_j / Σ_k σ_k``.

    Lies in ``[1, rank(M)]``; 0·log 0 is taken as 0.
    """
    s = singular_values(x)
    q = s / s.sum(-1, keepdim=True).clamp_min(1e-300)
    entropy = -(q * torch.log(q.clamp_min(1e-300))).sum(-1)
    return _undefined_where_zero(entropy.exp(), s)


def stable_rank(x: torch.Tensor) -> torch.Tensor:
    """Stable rank ``‖M‖_F² / ‖M‖₂² = Σ_j σ_j² / σ₁²``, in ``[1, rank(M)]``."""
    s = singular_values(x)
    return _undefined_where_zero(s.square().sum(-1) / s[..., 0].square().clamp_min(1e-300), s)


def relative_spectrum_shift(x: torch.Tensor, x_adv: torch.Tensor, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's relative shift of the image's singular values under an attack.

    ``a_j = mean_{b,c} |σ_j(x_adv,b,c) − σ_j(x_b,c)| / σ_j(x_b,c)`` and ``p_j = a_j / Σ_k a_k``.
    Guard: terms with ``σ_j(x_b,c) ≤ floor · σ₁(x_b,c)`` (numerically zero singular values of the clean
    image, e.g. constant or rank-deficient channels) are left out of the mean for that ``j``; the count
    of terms kept per ``j`` is returned implicitly by ``a_j`` being NaN when no term is left.

    Returns ``(a, p)``, each of shape ``(min(H, W),)``.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    s = singular_values(x)
    s_adv = singular_values(x_adv)
    valid = s > floor * s[..., :1]
    ratio = torch.where(valid, (s_adv - s).abs() / s.clamp_min(1e-300), torch.zeros_like(s))
    counts = valid.flatten(0, 1).sum(0)
    a = ratio.flatten(0, 1).sum(0) / counts.clamp_min(1)
    a = torch.where(counts > 0, a, torch.full_like(a, float("nan")))
    total = torch.nansum(a)
    p = a / total if total > 0 else torch.full_like(a, float("nan"))
    return a, p
