"""Rank-adaptive CondLR steps (an extension beyond both references), in the style of DLRT.

DLRT (Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco, "Low-rank lottery tickets: finding efficient low-rank
neural networks via matrix differential equations", NeurIPS 2022) grows and shrinks the rank by augmenting the
bases with the new gradient directions, integrating the core on the augmented ``2r × 2r`` space and truncating
its singular values with a relative tolerance θ. Here the same idea is applied to the single simultaneous
CondLR step, so it needs no second backward pass:

* the fixed-rank CondLR step moves ``W = U S Vᵀ`` to first order by
  ``ΔW = ΔU S Vᵀ + U ΔS Vᵀ + U S ΔVᵀ`` (``ΔU``, ``ΔV`` tangent, already scaled, times the learning rate);
* ``W − ΔW`` has rank ≤ 2r and lies in ``span(Û) × span(V̂)`` with ``Û = qf([U | ΔU])``,
  ``V̂ = qf([V | ΔV])``, so its augmented core ``Ŝ = Ûᵀ (W − ΔW) V̂`` is exact;
* ``Ŝ = P diag(σ) Qᵀ`` is truncated at the smallest ``r₁`` with ``‖σ_{r₁+1:}‖₂ < θ ‖σ‖₂`` (at least 1, at
  most the layer's capacity): ``U ← Û P_{:r₁}``, ``S ← diag(σ_{:r₁})``, ``V ← V̂ Q_{:r₁}``.

The optimiser then projects ``S`` onto ``κ(S) ≤ 1 + τ`` as on every step. Because that constraint keeps the
retained spectrum nearly flat, the rank grows only when the new directions carry a singular value of order
``θ ‖σ‖₂`` (large steps) and shrinks only when ``θ > √(k / r)`` for the ``k`` dropped values; a direction
that is kept is lifted into the band ``[σ_max / (1 + τ), σ_max]`` by the projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlr.checks import check_fraction
from robustlr.lowrank.manifold import linalg_dtype, qr_retraction, svd, tangent_projection

__all__ = ["augmented_update", "transport_directions", "truncation_rank", "validate_theta"]


def validate_theta(theta: float) -> float:
    """Return the truncation tolerance as a float if it is a real number (any :class:`numbers.Real`, not bool)
    with ``0 ≤ θ < 1``, else raise ValueError naming it."""
    try:
        return check_fraction("theta", theta)
    except ValueError:
        raise ValueError(f"theta must be a relative truncation tolerance in [0, 1); got {theta!r}") from None


def truncation_rank(sigma: Tensor, theta: float, max_rank: int) -> int:
    """Smallest ``r₁ ≥ 1`` with ``‖σ_{r₁+1:}‖₂ < θ ‖σ‖₂``, capped at ``max_rank``.

    ``sigma`` is a descending vector of singular values. With ``θ = 0`` every value is kept (up to the cap).
    """
    tails = sigma.square().flip(0).cumsum(0).flip(0).sqrt()  # tails[k] = ‖σ_{k:}‖₂
    small = (tails < theta * tails[0]).nonzero()
    keep = sigma.numel() if small.numel() == 0 else int(small[0])
    return max(1, min(keep, max_rank))


def augmented_update(
    u: Tensor,
    s: Tensor,
    v: Tensor,
    step_u: Tensor,
    step_s: Tensor,
    step_v: Tensor,
    theta: float,
    max_rank: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rank-adaptive version of the step ``U S Vᵀ → U S Vᵀ − (ΔU S Vᵀ + U ΔS Vᵀ + U S ΔVᵀ)``.

    Args:
        u, s, v: current factors (n × r, r × r, m × r), ``u`` and ``v`` with orthonormal columns.
        step_u, step_s, step_v: ``ΔU``, ``ΔS``, ``ΔV`` (learning rate included).
        theta: relative truncation tolerance (see :func:`truncation_rank`).
        max_rank: largest rank allowed after truncation.

    Returns:
        ``(U₁, S₁, V₁)`` of rank ``r₁``: orthonormal ``U₁``, ``V₁`` and diagonal ``S₁ = diag(σ_{:r₁})`` of
        ``Ŝ = Ûᵀ (W − ΔW) V̂``; the caller projects ``S₁`` onto the well-conditioned set.
    """
    dtype = u.dtype
    work = linalg_dtype(dtype)
    u, s, v, step_u, step_s, step_v = (t.to(work) for t in (u, s, v, step_u, step_s, step_v))
    u_hat = qr_retraction(torch.cat([u, step_u], dim=1))
    v_hat = qr_retraction(torch.cat([v, step_v], dim=1))
    left = u_hat.mT @ u
    right = v_hat.mT @ v
    core = left @ (s - step_s) @ right.mT - (u_hat.mT @ step_u) @ s @ right.mT - left @ s @ (v_hat.mT @ step_v).mT
    p, sigma, qh = svd(core)
    r1 = truncation_rank(sigma, theta, max_rank)
    return (u_hat @ p[:, :r1]).to(dtype), torch.diag(sigma[:r1]).to(dtype), (v_hat @ qh[:r1].mT).to(dtype)


def transport_directions(
    u0: Tensor, v0: Tensor, u1: Tensor, v1: Tensor, d_u: Tensor, d_s: Tensor, d_v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Re-express momentum directions after the bases changed from ``(U₀, V₀)`` (rank r₀) to ``(U₁, V₁)`` (r₁).

    With ``M_U = U₀ᵀ U₁`` and ``M_V = V₀ᵀ V₁``: the core direction becomes ``M_Uᵀ D_S M_V`` (the same
    weight-space direction ``U₀ D_S V₀ᵀ`` restricted to the new bases), and the basis directions have their
    columns mixed the same way and are projected onto the new tangent spaces,
    ``(I − U₁U₁ᵀ) D_U M_U`` and ``(I − V₁V₁ᵀ) D_V M_V``.
    """
    mix_u = u0.mT @ u1
    mix_v = v0.mT @ v1
    return (
        tangent_projection(u1, d_u @ mix_u),
        mix_u.mT @ d_s @ mix_v,
        tangent_projection(v1, d_v @ mix_v),
    )

