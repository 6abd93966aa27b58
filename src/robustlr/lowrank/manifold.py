"""Manifold operations of CondLR: QR retraction, tangent projection and projections of the core S.

CondLR (Savostianova, Zangrando, Ceruti, Tudisco, "Robust low-rank training via approximate orthonormal
constraints", NeurIPS 2023, arXiv 2306.01485) keeps every weight as ``W = U S Vᵀ`` with ``U``, ``V`` on
Stiefel manifolds (orthonormal columns) and the core ``S`` in the set of well-conditioned matrices
``{S : κ(S) ≤ 1 + τ}``. After every optimiser step the factors are pulled back onto these sets by the
functions of this module.

Every function works on batches: the matrices are the last two dimensions and any leading dimensions are
batch dimensions. The linear algebra runs in float64 for float64 inputs and in float32 otherwise (so
half-precision parameters are never decomposed in half precision); results are cast back to the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from robustlr.checks import is_real

__all__ = [
    "CHOLESKY_QR_LIMIT",
    "S_PROJECTIONS",
    "condition_projection",
    "condition_projection_flagged",
    "eigh_svd",
    "linalg_dtype",
    "qr_retraction",
    "svd",
    "svd_flagged",
    "tangent_projection",
    "tangent_retraction",
    "validate_tau",
]

#: Variants of the τ = 0 projection of S onto ``{s·Q : Q orthogonal}``.
S_PROJECTIONS = ("polar", "qr")


def linalg_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision in which decompositions run: float64 for float64 data, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def validate_tau(tau: float) -> float:
    """Return ``tau`` as a float if it is a finite real number ≥ 0 (any :class:`numbers.Real`, e.g.
    ``np.float32``; not bool), else raise ValueError naming it."""
    if not is_real(tau) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0 (the bound is kappa(S) <= 1 + tau); got {tau!r}")
    return float(tau)


def qr_retraction(x: Tensor) -> Tensor:
    """Orthonormal factor of the thin QR decomposition ``x = Q R``, with signs fixed so that ``diag(R) > 0``.

    For ``x`` of shape ``(..., n, k)`` the result has shape ``(..., n, min(n, k))``. With the sign convention
    the factor is unique when ``x`` has full column rank, hence ``qr_retraction(Q) = Q`` for any ``Q`` with
    orthonormal columns: the map is a retraction onto the Stiefel manifold. Columns whose ``R`` diagonal is
    exactly zero keep the sign the QR routine chose.
    """
    q, r = torch.linalg.qr(x.to(linalg_dtype(x.dtype)), mode="reduced")
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)
    signs = torch.where(diagonal < 0, -1.0, 1.0).to(q.dtype)
    return (q * signs.unsqueeze(-2)).to(x.dtype)


def svd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``x = P diag(σ) Qᴴ`` (σ descending) that does not give up on clustered singular values.

    ``torch.linalg.svd`` (LAPACK ``gesdd``) can fail to converge on matrices with many (nearly) repeated
    singular values, which the spectral clamp of CondLR produces by design (everything clipped to the band's
    edges); observed with MKL on CPU. On that error the SVD is recomputed by :func:`eigh_svd`. The same
    fallback is taken when LAPACK returns NaN/inf for a finite input without raising (seen once in a 20-epoch
    CondLR run with τ = 0 on a 250×250 core, not reproducible on the saved matrix). Works on batches (the
    fallback replaces only the matrices that need it); the result has the input's dtype. Costs one host read
    (the flag of :func:`svd_flagged`); CondLR reads the flags of all its layers at once instead.
    """
    p, sigma, qh, ok = svd_flagged(x)
    if x.device.type == "meta" or bool(ok.all()):
        return p, sigma, qh
    ok = ok | ~torch.isfinite(x).flatten(-2).all(-1)  # nothing to gain for a non-finite input
    fallback = eigh_svd(x)
    keep = ok[..., None]
    return (torch.where(keep[..., None], p, fallback[0]), torch.where(keep, sigma, fallback[1]),
            torch.where(keep[..., None], qh, fallback[2]))


def svd_flagged(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LAPACK's thin SVD ``x = P diag(σ) Qᴴ`` and a boolean flag per matrix (shape ``x.shape[:-2]``) on the
    device, without reading the host: the flag is false where the SVD came back with a NaN/inf (the caller
    then uses :func:`eigh_svd` for it, if the input was finite). A ``LinAlgError`` (raised on the host, no device
    read involved) is answered with :func:`eigh_svd` at once (flag true)."""
    try:
        p, sigma, qh = torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError:
        p, sigma, qh = eigh_svd(x)
        return p, sigma, qh, torch.ones(x.shape[:-2], dtype=torch.bool, device=x.device)
    # the entries of P and Q are at most 1 in magnitude, so their sums are finite exactly when they are
    vectors = p.sum((-2, -1)) + qh.sum((-2, -1))
    return p, sigma, qh, torch.isfinite(sigma).all(-1) & torch.isfinite(vectors)


def eigh_svd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD from the float64 symmetric eigendecomposition ``xᵀx = Q Λ Qᵀ`` (``σ = √λ``) and
    ``P = qf(x Q)``, whose columns ``x q_i = σ_i p_i`` are orthogonal (for ``σ_i = 0`` the QR completes the
    basis). Singular values below ``√eps·σ_max`` lose relative accuracy, which does not matter for the
    well-conditioned cores it is used on. Works on batches; the result has the input's dtype."""
    wide = x.shape[-2] < x.shape[-1]
    tall = (x.mT if wide else x).to(torch.float64)
    eigenvalues, q = torch.linalg.eigh(tall.mT @ tall)
    sigma = eigenvalues.flip(-1).clamp(min=0).sqrt()
    q = q.flip(-1)
    p = qr_retraction(tall @ q)
    p, sigma, q = (t.to(x.dtype) for t in (p, sigma, q))
    return (q, sigma, p.mT) if wide else (p, sigma, q.mT)


#: Largest bound on ``κ(X)²`` for which :func:`tangent_retraction` trusts Cholesky QR, whose loss of
#: orthogonality is about ``eps·κ(X)²`` (≈ 1e-6 in float32 there).
CHOLESKY_QR_LIMIT = 10.0


def tangent_retraction(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`qr_retraction` by Cholesky QR, for the well-conditioned ``X = U − Δ`` of an optimiser step
    (``U`` with orthonormal columns, ``Uᵀ Δ = 0``, so ``XᵀX = I + ΔᵀΔ``), and a flag per matrix saying whether
    the result can be used.

    With the Cholesky factor ``XᵀX = L Lᵀ`` (``diag(L) > 0``), ``Q = X L⁻ᵀ`` is the sign-fixed QR factor of
    ``X`` (``R = Lᵀ``), the same matrix as :func:`qr_retraction`'s. Cholesky QR loses about ``eps·κ(X)²`` of
    orthogonality; ``κ(X)² ≤ ‖XᵀX‖_∞ ‖L⁻ᵀ‖_1 ‖L⁻ᵀ‖_∞`` (``‖A‖₂² ≤ ‖A‖_1‖A‖_∞``; 1 for orthonormal ``X``). The
    flag (shape ``x.shape[:-2]``, on the device: no host read) is false where the Cholesky failed or that bound
    exceeds :data:`CHOLESKY_QR_LIMIT` or is not a number (a non-finite ``X``); the caller then uses
    :func:`qr_retraction` for it. Two products of the size of ``X`` (``XᵀX`` and ``X L⁻ᵀ``) instead of a
    Householder QR. Shapes ``(..., n, k)`` with ``k ≤ n``.
    """
    dtype = linalg_dtype(x.dtype)
    work = x if x.dtype == dtype else x.to(dtype)
    gram = work.mT @ work
    lower, info = torch.linalg.cholesky_ex(gram)
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    inverse = torch.linalg.solve_triangular(lower.mT, identity, upper=True)
    q = work @ inverse
    magnitude = inverse.abs()  # the norms by hand: one abs for both, 1.2–1.3x faster than matrix_norm on batches
    bound = gram.abs().sum(-1).amax(-1) * magnitude.sum(-2).amax(-1) * magnitude.sum(-1).amax(-1)
    return q if q.dtype == x.dtype else q.to(x.dtype), (info == 0) & (bound <= CHOLESKY_QR_LIMIT)


def tangent_projection(u: Tensor, g: Tensor) -> Tensor:
    """Component of ``g`` orthogonal to the column span of ``u``: ``(I − U Uᵀ) G``.

    ``u`` has orthonormal columns, shape ``(..., n, r)``; ``g`` has shape ``(..., n, k)``. Applied to a
    direction for ``U`` this is the CondLR normal-component projection (the Koch–Lubich gauge ``UᵀU̇ = 0``).
    """
    coefficients = u.mT @ g
    if u.ndim == g.ndim == 2:
        return torch.addmm(g, u, coefficients, alpha=-1)  # the product and the subtraction in one call
    if u.ndim == g.ndim == 3 and u.shape[0] == g.shape[0]:
        return torch.baddbmm(g, u, coefficients, alpha=-1)
    return g - u @ coefficients


#: An SVD with a flag per matrix, as :func:`svd_flagged`.
Decomposition = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def _checked_svd(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`svd` (fallback already taken), flagged as usable everywhere."""
    return (*svd(x), torch.ones(x.shape[:-2], dtype=torch.bool, device=x.device))


def _scaled_orthogonal(s: Tensor, method: str, decompose: Decomposition) -> tuple[Tensor, Tensor, Tensor]:
    """τ = 0: ``S ← s·Q`` with ``s² = ‖S‖²_F / r`` and ``Q`` the polar factor (``"polar"``) or the sign-fixed
    QR factor (``"qr"``, the reference code's choice) of ``S``. Returns the matrix, its singular values and
    the flag of the SVD (all true for ``"qr"``)."""
    r = s.shape[-1]
    scale = torch.linalg.matrix_norm(s).div(math.sqrt(r))
    if method == "polar":
        p, _, qh, ok = decompose(s)
        orthogonal = p @ qh
    else:
        orthogonal, ok = qr_retraction(s), torch.ones(s.shape[:-2], dtype=torch.bool, device=s.device)
    singular_values = scale.unsqueeze(-1).expand(*s.shape[:-2], r)
    return scale[..., None, None] * orthogonal, singular_values, ok


def _clamped_spectrum(s: Tensor, tau: float, decompose: Decomposition) -> tuple[Tensor, Tensor, Tensor]:
    """τ > 0: clamp the singular values of ``S`` into a band ``[ℓ, (1 + τ)ℓ]``.

    With ``S = P diag(σ) Qᵀ`` and ``μ = mean(σ)``, the reference band has ``ℓ_ref = μ − e`` with
    ``e = μ τ / (2 + τ)``, so that ``(μ + e)/(μ − e) = 1 + τ``. The band actually used has
    ``ℓ = clip(ℓ_ref, min(a, b), max(a, b))`` where ``a = σ_min`` and ``b = σ_max / (1 + τ)``:

    * if ``κ(S) ≤ 1 + τ`` (``b ≤ a``) every admissible band contains the whole spectrum, so ``S`` is
      returned unchanged (bit for bit);
    * otherwise ``ℓ = ℓ_ref`` whenever the reference band clips both ends of the spectrum, and the band is
      shifted to the nearest one that does when the reference band would clip only one end needlessly.

    The map gives ``κ ≤ 1 + τ``, is idempotent and is continuous on nonsingular ``S`` (at the feasibility
    boundary the band is ``[σ_min, σ_max]`` and the clamp is the identity). Returns the matrix, its
    singular values (in descending order) and the flag of the SVD.
    """
    p, sigma, qh, ok = decompose(s)
    mean = sigma.mean(dim=-1, keepdim=True)
    reference_low = 2.0 * mean / (2.0 + tau)
    smallest = sigma[..., -1:]
    largest_over = sigma[..., :1] / (1.0 + tau)
    low = torch.clamp(
        reference_low, min=torch.minimum(smallest, largest_over), max=torch.maximum(smallest, largest_over)
    )
    clamped = torch.clamp(sigma, min=low, max=(1.0 + tau) * low)
    feasible = largest_over <= smallest
    projected = (p * clamped.unsqueeze(-2)) @ qh
    return torch.where(feasible.unsqueeze(-1), s, projected), torch.where(feasible, sigma, clamped), ok


def condition_projection(s: Tensor, tau: float, method: str = "polar") -> tuple[Tensor, Tensor]:
    """Project the core ``S`` (shape ``(..., r, r)``) onto ``{S : κ(S) ≤ 1 + τ}``.

    * ``τ = 0``: ``S ← s·Q`` with ``s² = ‖S‖²_F / r`` (so ``‖S‖_F`` is kept) and ``Q`` orthogonal: the polar
      factor ``P Qᵀ`` of ``S = P Σ Qᵀ`` (``method="polar"``, the nearest orthogonal matrix) or the sign-fixed
      QR factor of ``S`` (``method="qr"``, as in the reference code). All singular values become ``s``.
    * ``τ > 0``: SVD ``S = P diag(σ) Qᵀ``, clamp ``σ`` into a band ``[ℓ, (1 + τ)ℓ]``, ``S ← P diag(σ_c) Qᵀ``.
      The band is the reference code's, centred on ``μ = mean(σ)`` (``ℓ = 2μ/(2 + τ)``), shifted minimally
      when it would clip only one end of the spectrum; matrices with ``κ(S) ≤ 1 + τ`` are returned
      unchanged (the reference band would move some of them). ``method`` is not used.

    Both maps are idempotent. Returns ``(S_projected, singular values of S_projected)``, the latter in
    descending order with shape ``(..., r)``; the optimiser uses them for its gradient scale. One host read
    (the SVD's flag, see :func:`svd`); :func:`condition_projection_flagged` makes none.
    """
    projected, sigma, ok = condition_projection_flagged(s, tau, method)
    if s.device.type == "meta" or bool(ok.all()):
        return projected, sigma
    work = s.to(linalg_dtype(s.dtype))
    projected, sigma, _ = _projection(work, validate_tau(tau), method, _checked_svd)
    return projected.to(s.dtype), sigma


def _projection(work: Tensor, tau: float, method: str, decompose: Decomposition) -> tuple[Tensor, Tensor, Tensor]:
    """The map of :func:`condition_projection` for this ``tau`` (validated), with the SVD ``decompose``."""
    return _scaled_orthogonal(work, method, decompose) if tau == 0 else _clamped_spectrum(work, tau, decompose)


def condition_projection_flagged(s: Tensor, tau: float, method: str = "polar") -> tuple[Tensor, Tensor, Tensor]:
    """:func:`condition_projection` without a host read: returns ``(S_projected, σ, ok)`` where ``ok`` (shape
    ``s.shape[:-2]``, on the device) is false for the matrices whose LAPACK SVD came back non-finite; the
    caller recomputes those with :func:`condition_projection`."""
    tau = validate_tau(tau)
    if method not in S_PROJECTIONS:
        raise ValueError(f"method must be one of {S_PROJECTIONS}; got {method!r}")
    if s.ndim < 2 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"S must be a (batch of) square matrices; got shape {tuple(s.shape)}")
    projected, sigma, ok = _projection(s.to(linalg_dtype(s.dtype)), tau, method, svd_flagged)
    return projected.to(s.dtype), sigma, ok
