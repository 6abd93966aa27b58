"""Norms, norm-ball projections and rank-r truncation of image perturbations.

This module is the single home of these operations in robustlr: attacks, analysis and evaluation import
them from here and nothing else re-implements them.

Conventions: tensors are batched, ``(N, ...)``; "per sample" means over all non-batch entries jointly, so
for an image perturbation ``δ ∈ R^{N×C×H×W}`` the per-sample L2 norm is the Frobenius norm of ``δ_b``
over its ``C·H·W`` entries.  Rank statements are *per channel*: ``δ_{b,c}`` is an ``H×W`` matrix.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "NORMS",
    "TINY",
    "check_norm",
    "per_sample_norm",
    "normalize_per_sample",
    "project_ball",
    "clip_unit",
    "truncate_rank",
    "check_rank_spec",
    "resolve_rank",
    "channel_svd",
]

NORMS = ("linf", "l2")
"""Supported threat models."""

TINY = 1e-12
"""Guard added to denominators so that a zero vector never produces NaN."""


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is a supported threat model, else raise ``ValueError``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _view(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample ``values`` of shape (N,) so they broadcast against ``x``."""
    return values.reshape((-1,) + (1,) * (x.dim() - 1))


def per_sample_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch, shape (N,).

    ``"l2"``: ``‖x_b‖₂ = (Σ_i x_{b,i}²)^{1/2}``; ``"linf"``: ``‖x_b‖∞ = max_i |x_{b,i}|``;
    ``"nuc"``: the sum over channels of the nuclear norm ``Σ_c ‖x_{b,c}‖_* = Σ_c Σ_j σ_j(x_{b,c})``
    (4-D input only).
    """
    if norm == "nuc":
        return channel_svd(x).sum(dim=(1, 2))
    check_norm(norm)
    flat = x.reshape(x.shape[0], -1)
    if norm == "l2":
        return torch.linalg.vector_norm(flat, ord=2, dim=1)
    return flat.abs().amax(dim=1)


def normalize_per_sample(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` per sample.

    ``"linf"``: ``sign(x)`` (the maximiser of ``⟨x, d⟩`` over ``‖d‖∞ ≤ 1``);
    ``"l2"``: ``x / (‖x‖₂ + tiny)``, which is 0 (not NaN) for a zero sample.
    """
    check_norm(norm)
    if norm == "linf":
        return x.sign()
    return x / (_view(x, per_sample_norm(x, "l2")) + TINY)


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto ``{d : ‖d‖ ≤ eps}``.

    ``"linf"``: entry-wise clamp to ``[-eps, eps]``; ``"l2"``: rescale by ``min(1, eps/‖d‖₂)``.
    Both are exact projections; samples already inside the ball are returned unchanged.
    """
    check_norm(norm)
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = per_sample_norm(delta, "l2")
    factor = torch.clamp(eps / (norms + TINY), max=1.0)
    return delta * _view(delta, factor)


def clip_unit(x: torch.Tensor) -> torch.Tensor:
    """Clip to the valid image box ``[0, 1]``."""
    return x.clamp(0.0, 1.0)


def check_rank_spec(rank: int | float, name: str = "rank") -> int | float:
    """Check that ``rank`` is an int ≥ 1 or a fraction in ``(0, 1]``; the upper bound of an int rank is
    checked by :func:`resolve_rank` once the matrix size is known."""
    ok_int = isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1
    ok_frac = isinstance(rank, float) and math.isfinite(rank) and 0.0 < rank <= 1.0
    if not (ok_int or ok_frac):
        raise ValueError(f"{name} must be an int >= 1 (at most min(H, W)) or a fraction in (0, 1], got {rank!r}")
    return rank


def resolve_rank(rank: int | float, full: int, name: str = "rank") -> int:
    """Turn ``rank`` (an int in ``[1, full]`` or a fraction in ``(0, 1]``) into an int.

    A fraction ``f`` gives ``r = round(f · full)`` (at least 1), the convention of the LoRa-PGD paper
    (e.g. 0.1 · 32 → 3).  A Python ``float`` is always read as a fraction, an ``int`` as a rank.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"{name} must be an int in [1, {full}] or a fraction in (0, 1], got {rank!r}")
    if isinstance(rank, int):
        if not 1 <= rank <= full:
            raise ValueError(f"{name} must be an int in [1, {full}] or a fraction in (0, 1], got {rank}")
        return rank
    if not (math.isfinite(rank) and 0.0 < rank <= 1.0):
        raise ValueError(f"{name} must be an int in [1, {full}] or a fraction in (0, 1], got {rank}")
    return max(1, min(full, int(round(rank * full))))


def channel_svd(x: torch.Tensor, full: bool = False):
    """Singular values of every channel matrix of a batch ``(N, C, H, W)``.

    Returns ``σ`` of shape ``(N, C, min(H, W))`` in decreasing order, computed in float64 for accuracy;
    with ``full=True`` returns ``(P, σ, Qᵀ)`` of the thin SVD ``x_{b,c} = P diag(σ) Qᵀ`` instead.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    xd = x.detach().to(torch.float64)
    if full:
        return torch.linalg.svd(xd, full_matrices=False)
    return torch.linalg.svdvals(xd)


def truncate_rank(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation of every channel matrix (Eckart–Young), same dtype as input.

    ``δ_{b,c} = P Σ Qᵀ  ↦  P_{:, :r} Σ_{:r} Q_{:, :r}ᵀ``; the Frobenius error is ``(Σ_{j>r} σ_j²)^{1/2}``.
    """
    p, s, qh = channel_svd(delta, full=True)
    r = min(rank, s.shape[-1])
    low = (p[..., :r] * s[..., None, :r]) @ qh[..., :r, :]
    return low.to(delta.dtype)
