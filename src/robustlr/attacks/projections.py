"""Norms, norm-ball projections and rank-r truncation of image perturbations.

This module is the single home of these operations in robustlr: attacks, analysis and evaluation import
them from here and nothing else re-implements them.

Conventions: tensors are batched, ``(N, ...)``; "per sample" means over all non-batch entries jointly, so
for an image perturbation ``δ ∈ R^{N×C×H×W}`` the per-sample L2 norm is the Frobenius norm of ``δ_b``
over its ``C·H·W`` entries.  Rank statements are *per channel*: ``δ_{b,c}`` is an ``H×W`` matrix.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checks import is_integer, is_real

__all__ = [
    "NORMS",
    "TINY",
    "check_norm",
    "per_sample_norm",
    "normalize_per_sample",
    "project_ball",
    "box_bounds",
    "ascend_",
    "project_",
    "clip_unit",
    "fit_budget",
    "truncate_rank",
    "check_rank_spec",
    "resolve_rank",
    "channel_svd",
    "hyperplane_distance",
    "hyperplane_box_step",
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
    if x.dim() == 1:  # samples of one entry: both norms are |x_b| (an empty dims tuple would reduce all)
        return x.abs()
    dims = tuple(range(1, x.dim()))  # reduced in place: no reshape, which would copy a channels_last batch
    if norm == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=dims)
    return torch.linalg.vector_norm(x, ord=float("inf"), dim=dims)


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


def box_bounds(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The entry-wise bounds of ``[0,1]^d ∩ {x' : ‖x' − x‖∞ ≤ ε}``: ``(max(0, x − ε), min(1, x + ε))``."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def ascend_(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str, scratch: torch.Tensor) -> torch.Tensor:
    """``x_adv ← x_adv + α · d(grad)`` in place (``d`` of :func:`normalize_per_sample`), using ``scratch``
    (a tensor of ``x_adv``'s shape and dtype) and no other full-size temporary; returns ``x_adv``."""
    if norm == "linf":
        return x_adv.add_(torch.sign(grad, out=scratch), alpha=alpha)
    check_norm(norm)
    scale = alpha / (per_sample_norm(grad, "l2") + TINY)
    return x_adv.add_(torch.mul(grad, _view(grad, scale), out=scratch))


def project_(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, scratch: torch.Tensor,
             box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x_adv ← clip_[0,1](x + Π_ε(x_adv − x))`` in place (:func:`project_ball`, :func:`clip_unit`); returns it.

    L∞: the box and the ball are both entry-wise intervals, so the two projections are one clamp to
    ``box = box_bounds(x, ε)``.  L2: ``δ = x_adv − x`` goes to ``scratch``, then
    ``x_adv = clip(x + δ·min(1, ε/(‖δ‖₂ + tiny)))``.
    """
    if norm == "linf":
        lo, hi = box if box is not None else box_bounds(x, eps)
        return torch.clamp(x_adv, lo, hi, out=x_adv)
    check_norm(norm)
    delta = torch.sub(x_adv, x, out=scratch)
    factor = torch.clamp(eps / (per_sample_norm(delta, "l2") + TINY), max=1.0)
    return torch.addcmul(x, delta, _view(delta, factor), out=x_adv).clamp_(0.0, 1.0)


def clip_unit(x: torch.Tensor) -> torch.Tensor:
    """Clip to the valid image box ``[0, 1]``."""
    return x.clamp(0.0, 1.0)


def fit_budget(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str, dtype: torch.dtype) -> torch.Tensor:
    """The adversarial images ``clip_[0,1](x + δ)`` in ``dtype``, with the budget held in that dtype.

    ``delta`` and ``x`` are in the attack's working dtype (float32 or wider, see
    :mod:`robustlr.attacks.precision`) and ``x`` holds values of ``dtype`` (it is the upcast input).  The
    returned ``x_adv`` (of ``dtype``) satisfies, per sample,

    * ``x_adv ∈ [0, 1]``;
    * ``‖x_adv − x‖∞ ≤ ε`` exactly (for L∞), and ``‖x_adv − x‖₂ ≤ ε`` as measured in the working dtype
      (or wider) from the returned tensor (for L2).

    Rounding to nearest in ``dtype`` may move an entry away from ``x`` and push ``|δ_i|`` above ``ε`` (PGD-L∞
    at ε = 0.1 reached 0.1035 in bfloat16).  Here ``δ`` is projected onto the ball of the largest radius of
    the working dtype that is ``≤ ε``, and every entry of ``x + δ`` is rounded *toward* ``x``
    (:func:`_round_toward`), so ``|x_adv_i − x_i| ≤ |δ_i|`` entry-wise and no norm grows.  For L2 the
    float32 projection is accurate to a few ulps only, so its radius is ``(1 − margin)·radius`` with the
    margin :data:`_L2_MARGIN` above those ulps: the exact norm of ``x_adv − x`` is then at most
    ``(1 − margin)(1 + few ulps)·radius < radius``, and so is a float32 or float64 measurement of it.
    """
    check_norm(norm)
    if delta.dtype != x.dtype or delta.shape != x.shape:
        raise ValueError(f"delta and x must have the same shape and dtype, got {tuple(delta.shape)} {delta.dtype} "
                         f"and {tuple(x.shape)} {x.dtype}")
    radius = _radius_below(eps, delta.dtype)
    return _round_toward(x, project_ball(delta, radius if norm == "linf" else radius * (1 - _L2_MARGIN), norm), dtype)


_L2_MARGIN = 2.0**-20
"""Relative margin of the L2 budget of :func:`fit_budget`: δ is projected onto ``(1 − margin)·radius``.  It
exceeds the error of a float32 norm and of the rescaling (a few ulps of 2⁻²⁴), so the result is inside the ball
also when measured in float64, and stays below 1e-6, so a float32 result moves by less than 1e-6 per entry."""


_HOST_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
"""The host (numpy) types of the working dtypes, for arithmetic on budgets that reads no tensor."""


def _radius_below(eps: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` that is ``≤ eps`` (``eps`` itself if representable), computed on the
    host from numbers (no tensor is read, so no device synchronisation)."""
    if dtype not in _HOST_FLOATS:
        raise ValueError(f"delta must be float16, float32 or float64 (the attack's working dtype), got {dtype}")
    kind = _HOST_FLOATS[dtype]
    radius = kind(eps)
    if float(radius) > eps:
        radius = np.nextafter(radius, kind(0))
    return float(radius)


def _round_toward(x: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``clip_[0,1](x + δ)`` rounded to ``dtype`` entry-wise toward ``x``, so ``|out_i − x_i| ≤ |δ_i|``.

    ``x + δ`` is formed in the working dtype with its exact rounding error (Knuth's TwoSum: ``v + err``
    equals ``x + δ`` exactly); the cast to ``dtype`` rounds to nearest, and an entry that landed beyond the
    exact target on the far side from ``x`` is moved one step toward ``x``, to the neighbour that lies between
    ``x`` and the target (``x`` is a value of ``dtype``, so that neighbour exists).
    """
    v = x + delta
    back = v - x
    err = torch.sub(v, back)
    torch.sub(x, err, out=err).add_(torch.sub(delta, back))  # TwoSum: v + err = x + δ exactly
    if dtype == v.dtype:
        # no cast: an entry is away iff its rounding error points away from x (1.0 where away, else 0.0); the step
        # of one ulp toward x is exact (neighbouring floats); entries outside [0, 1] are clipped afterwards anyway
        away = torch.lt(err.mul_(back), 0, out=err)
        step = torch.nextafter(v, x, out=back).sub_(v)
        return v.addcmul_(step, away).clamp_(0.0, 1.0)
    target = clip_unit(v)
    err = torch.where(target == v, err, torch.zeros_like(err))  # a clipped entry is exactly 0 or 1
    out = target.to(dtype)
    seen = out.to(target.dtype)
    above = (seen > target) | ((seen == target) & (err < 0))
    below = (seen < target) | ((seen == target) & (err > 0))
    target_above_x = (target > x) | ((target == x) & (err > 0))
    target_below_x = (target < x) | ((target == x) & (err < 0))
    away = (above & target_above_x) | (below & target_below_x)
    return torch.where(away, torch.nextafter(out, x.to(dtype)), out)


_RANK_DOC = "an int >= 1 (at most min(H, W)) or a fraction in (0, 1]"


def _rank_number(rank: object, name: str, allowed: str) -> int | float:
    """``rank`` as a Python ``int`` (any integer number: a rank) or ``float`` (any other real number: a
    fraction); bools and non-numbers raise ``ValueError``."""
    if is_integer(rank):
        return int(rank)  # type: ignore[call-overload]
    if is_real(rank):
        return float(rank)  # type: ignore[arg-type]
    raise ValueError(f"{name} must be {allowed}, got {rank!r}")


def check_rank_spec(rank: int | float, name: str = "rank") -> int | float:
    """Return ``rank`` as an ``int`` ≥ 1 or a ``float`` fraction in ``(0, 1]``, else raise ``ValueError``.

    Any integer number (``int``, ``np.int64``) is a rank and any other real number (``float``,
    ``np.float32``) a fraction; ``bool`` is neither.  The upper bound of an int rank is checked by
    :func:`resolve_rank` once the matrix size is known.
    """
    value = _rank_number(rank, name, _RANK_DOC)
    if isinstance(value, int):
        ok = value >= 1
    else:
        ok = math.isfinite(value) and 0.0 < value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be {_RANK_DOC}, got {rank!r}")
    return value


def resolve_rank(rank: int | float, full: int, name: str = "rank") -> int:
    """Turn ``rank`` (an integer in ``[1, full]`` or a fraction in ``(0, 1]``) into an ``int``.

    A fraction ``f`` gives ``r = round(f · full)`` (at least 1), the convention of the LoRa-PGD paper
    (e.g. 0.1 · 32 → 3).  As in :func:`check_rank_spec`, any integer number (``int``, ``np.int64``) is a rank
    and any other real number (``float``, ``np.float32``) a fraction.
    """
    allowed = f"an int in [1, {full}] or a fraction in (0, 1]"
    value = _rank_number(rank, name, allowed)
    if isinstance(value, int):
        if not 1 <= value <= full:
            raise ValueError(f"{name} must be {allowed}, got {rank!r}")
        return value
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be {allowed}, got {rank!r}")
    return max(1, min(full, int(round(value * full))))


def channel_svd(x: torch.Tensor, full: bool = False, dtype: torch.dtype = torch.float64):
    """Singular values of every channel matrix of a batch ``(N, C, H, W)``.

    Returns ``σ`` of shape ``(N, C, min(H, W))`` in decreasing order, computed in ``dtype`` (float64 by default,
    for accuracy; float32 where speed matters more, e.g. the nuclear norms of an evaluation);
    with ``full=True`` returns ``(P, σ, Qᵀ)`` of the thin SVD ``x_{b,c} = P diag(σ) Qᵀ`` instead.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    xd = x.detach().to(dtype)
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


# ---------------------------------------------------------------------------- hyperplane ∩ box


def hyperplane_distance(gap: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``norm`` distance from a point ``x`` to the hyperplane ``{z : g + ⟨w, z − x⟩ = 0}``.

    ``dist = |g| / ‖w‖_*`` with the dual norm ``‖·‖_*`` (L1 for ``"linf"``, L2 for ``"l2"``; Hölder's
    inequality is tight); ``gap = g`` of shape ``(N,)``, ``w`` of shape ``(N, ...)``.  A sample with ``w = 0``
    is at distance 0 if ``g = 0`` (every point is on it) and ``inf`` otherwise (there is no such plane).
    """
    check_norm(norm)
    if gap.shape != w.shape[:1]:
        raise ValueError(f"gap must have shape ({w.shape[0]},) (one value per sample of w), got {tuple(gap.shape)}")
    dims = tuple(range(1, w.dim()))
    dual = torch.linalg.vector_norm(w, ord=1 if norm == "linf" else 2, dim=dims) if dims else w.abs()
    far = torch.where(gap == 0, 0.0, math.inf)
    return torch.where(dual > 0, gap.abs() / torch.where(dual > 0, dual, 1.0), far.to(dual.dtype))


def hyperplane_box_step(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The minimum-norm step from each point onto its hyperplane inside the image box ``[0, 1]^d``.

    For every sample ``n`` (``t = points_n``, ``w = w_n`` flattened, ``b = b_n``) the step is

        δ* = argmin ‖δ‖  s.t.  ⟨w, t + δ⟩ = b,  t + δ ∈ [0, 1]^d        (‖·‖ = ‖·‖∞ or ‖·‖₂)

    the projection of FAB (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
    boundary attack", ICML 2020, arXiv 1907.02044, Sec. 3.1).  ``points`` must lie in the box (not checked:
    reading the values would cost a host round trip).

    Solution.  Flip the signs so that ``c = s(⟨w, t⟩ − b) ≥ 0`` (``s = ±1``) and write ``w̃ = s·w``: the step
    moves coordinate ``i`` against ``w̃_i`` by ``m_i ≤ r_i``, its room in the box (``r_i = t_i`` if
    ``w̃_i > 0``, ``1 − t_i`` if ``w̃_i < 0``), so ``δ_i = −sign(w̃_i)·m_i`` and ``⟨w̃, δ⟩ = −Σ|w_i| m_i = −c``:

    * L∞: ``m_i = min(λ, r_i)`` with ``λ`` the root of ``Σ_i |w_i| min(λ, r_i) = c`` (the most a step of
      ``‖δ‖∞ ≤ λ`` can lower ``⟨w̃, ·⟩`` inside the box is that sum, which grows with ``λ``);
    * L2: ``m_i = min(μ|w_i|, r_i)`` with ``μ`` the root of ``Σ_i |w_i| min(μ|w_i|, r_i) = c`` (the KKT
      conditions of the quadratic programme: ``δ = clip(−μ w̃, −t, 1 − t)``).

    Both left-hand sides are ``φ(τ) = Σ_i v_i min(τ, β_i)``, increasing and piecewise linear in ``τ``
    (L∞: ``v = |w|, β = r``; L2: ``v = w², β = r/|w|``); the root is found exactly by sorting the
    breakpoints ``β`` (:func:`_piecewise_root`; no iteration, no host round trip).  Coordinates with
    ``w_i = 0`` do not move.  Where the box does not reach the hyperplane (``Σ_i |w_i| r_i < c``) the step
    goes to the box corner nearest it, ``m_i = r_i`` (the least-norm minimiser of ``|⟨w, t + δ⟩ − b|`` over
    the box), as AutoAttack's FAB does.

    ``w`` and ``b`` are divided by ``max_i |w_i|`` first, so multiplying them by any positive factor (a
    gradient scaled by 1e-8 or 1e4) leaves the step unchanged, also in floating point.

    Args:
        points: ``(N, ...)`` points ``t`` in ``[0, 1]``.
        w: the hyperplanes' normals, shaped like ``points``.
        b: the hyperplanes' offsets, shape ``(N,)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``δ*`` shaped like ``points``, in its dtype.
    """
    check_norm(norm)
    if not points.is_floating_point() or points.dim() < 1:
        raise ValueError(f"points must be a floating tensor (N, ...), got {points.dtype} of shape "
                         f"{tuple(points.shape)}")
    if w.shape != points.shape:
        raise ValueError(f"w must have the shape of points {tuple(points.shape)}, got {tuple(w.shape)}")
    if b.shape != points.shape[:1]:
        raise ValueError(f"b must have shape ({points.shape[0]},) (one offset per point), got {tuple(b.shape)}")
    n = points.shape[0]
    t = points.reshape(n, -1)
    normal = w.reshape(n, -1).to(t.dtype)
    scale = normal.abs().amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    normal = normal / scale[:, None]
    gap = (normal * t).sum(dim=1) - b.to(t.dtype) / scale
    normal = torch.where(gap[:, None] < 0, -normal, normal)
    gap = gap.abs()
    weight = normal.abs()
    room = torch.where(normal > 0, t, 1 - t)
    if norm == "linf":
        move = torch.minimum(_piecewise_root(weight, room, gap)[:, None], room)
    else:
        reach = torch.where(weight > 0, room / torch.where(weight > 0, weight, 1.0), 0.0)
        move = torch.minimum(_piecewise_root(weight * weight, reach, gap)[:, None] * weight, room)
    return (-normal.sign() * move).reshape(points.shape)


def _piecewise_root(v: torch.Tensor, beta: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row, the least ``τ ≥ 0`` with ``φ(τ) = Σ_i v_i min(τ, β_i) = c``, for ``v, β ≥ 0`` of shape
    ``(N, d)`` and ``c ≥ 0`` of shape ``(N,)``; where ``φ`` never reaches ``c`` (``Σ_i v_i β_i < c``), the
    largest breakpoint ``max_i β_i``, at which every ``min(τ, β_i) = β_i``.

    Sorted breakpoints ``β_(1) ≤ … ≤ β_(d)`` (of the entries with ``v > 0``) give
    ``φ(β_(k)) = Σ_{j≤k} v_(j) β_(j) + β_(k) Σ_{j>k} v_(j)``; with ``K`` the number of them below ``c``, the
    root lies on the segment after the ``K``-th: ``τ = (c − Σ_{j≤K} v_(j) β_(j)) / Σ_{j>K} v_(j)``.
    """
    moving = v > 0
    keys, order = torch.where(moving, beta, torch.full_like(beta, math.inf)).sort(dim=1)
    v_sorted = v.gather(1, order)
    moving_sorted = v_sorted > 0
    breaks = torch.where(moving_sorted, keys, torch.zeros_like(keys))
    done = torch.cumsum(v_sorted * breaks, dim=1)  # Σ_{j≤k} v_(j) β_(j)
    rest = torch.flip(torch.cumsum(torch.flip(v_sorted, (1,)), dim=1), (1,))  # Σ_{j≥k} v_(j)
    after = torch.nn.functional.pad(rest[:, 1:], (0, 1))  # Σ_{j>k} v_(j)
    phi = torch.where(moving_sorted, done + breaks * after, torch.full_like(done, math.inf))
    below = (phi < c[:, None]).sum(dim=1)
    feasible = below < moving_sorted.sum(dim=1)
    at = below.clamp(max=v.shape[1] - 1)[:, None]
    done_before = torch.nn.functional.pad(done[:, :-1], (1, 0)).gather(1, at).squeeze(1)  # Σ_{j<k}
    slope = rest.gather(1, at).squeeze(1)
    root = (c - done_before) / torch.where(feasible, slope, torch.ones_like(slope))
    largest = torch.where(moving, beta, torch.zeros_like(beta)).amax(dim=1)
    return torch.where(feasible, root.clamp(min=0.0), largest)
