"""The Square attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, arXiv 1912.00049), in L∞ and L2.

Square is score-based and black-box: it only *evaluates* the model (under ``torch.no_grad()``, never a
gradient) at random candidates near its current iterate and keeps a candidate when it lowers the margin

    m(x') = z_y(x') − max_{j≠y} z_j(x')        (targeted: max_{j≠t} z_j(x') − z_t(x')),

the negative of the base class's ``"margin"`` objective.  A sample whose margin reaches ``m ≤ 0``
(misclassified, or the target reached) is frozen: it is never changed again.  So gradient masking (zero,
random or shattered gradients) does not stop it, which is why AutoAttack runs it next to the gradient attacks.

**Schedule** (paper §3, AutoAttack's rescaling).  At query ``i = 0, …, Q−1`` of a budget of ``Q`` queries a
square covers the fraction ``p_i = p_init / d(⌊10000·i/Q⌋)`` of the image, with ``d(t) = 1`` for ``t ≤ 10``,
then 2, 4, 8, 16, 32, 64, 128, 256 up to ``t ≤ 50, 200, 500, 1000, 2000, 4000, 6000, 8000`` and 512 beyond
(the paper's halvings for 10 000 queries, rescaled to ``Q``; :func:`square_fraction`).  The side is
``s_i = round(√(p_i·H·W))`` limited to ``[1, min(H, W)]`` (L∞), or at least 3, made odd, and at most
``min(H, W)`` (L2) (:func:`square_side`).  Every sample of a batch uses the same side at a query index.

**L∞** (paper Alg. 2).  Start: vertical stripes ``x₀ = clip_[0,1](x + ε·σ)`` with a sign ``σ ∈ {±1}`` per
(channel, column).  Query: a window of side ``s`` at a uniform position (all ``H−s+1`` rows and ``W−s+1``
columns); in it every channel is set to ``clip_[0,1](x ± ε)`` with a random sign per channel, a vertex of
the box ``[0,1]^d ∩ B∞(x, ε)``; outside it the iterate is kept.

**L2** (paper Alg. 3).  The pattern ``η(s)`` (:func:`l2_pattern`) is a stack of two "meta-pseudo-Gaussian"
rectangles of opposite sign: on a rectangle with centre ``c`` the entry at Chebyshev distance ``d`` from
``c`` is ``Σ_{k=d}^{K−1} (k+1)⁻²`` (nested squares of weight ``(k+1)⁻²``), each half and the whole normalised to
unit Frobenius norm; it is transposed with probability ½.  Start: a centred grid of tiles of side
``⌊min(H,W)/5⌋``, each ``±η`` (a sign per channel), scaled to ``‖δ‖₂ = ε``.  Query, with ``δ = x_best − x``:
windows ``W₁``, ``W₂`` of side ``s`` at uniform positions; per channel ``c`` the new content of ``W₁`` is

    ν_c = (±η + δ_{c,W₁}/‖δ_{c,W₁}‖) / ‖·‖ · √( max(ε² − ‖δ‖², 0)/C + ‖δ_{c,W₁∪W₂}‖² ),

``δ'`` is ``δ`` with ``W₂`` zeroed and ``W₁ = ν``, and the candidate is ``clip_[0,1](x + ε·δ'/‖δ'‖₂)``: mass
moves from ``W₂`` to ``W₁`` and the budget is always spent in full.

Differences from the reference implementation (pyautoattack 0.2.0, ``square.py``; the tests check that the
robust accuracies agree): (1) window positions, signs and transpositions are drawn *per sample* (the
reference draws one window and one sign vector per query for the whole batch), so a sample's result does not
depend on its batch; (2) positions range over all ``H−s+1`` rows as in the paper (the reference's
``randint(0, H−s)`` never reaches the last one); (3) the L2 start uses as many tiles as fit, centred (the
reference's 5×5 grid whenever ``H // ⌊H/5⌋ = 5``, e.g. H = W ∈ {28, 32, 64, 224}); L2 needs ``H, W ≥ 5``.

**Host reads.**  The reference shrinks the batch to the unfooled samples at every query, a host read each
time.  Here every sample of the current batch is queried, the fooled ones frozen by device-side masks, and the
batch is compacted to the unfooled ones (one host read: how many are left) before query 0, before the powers
of two below ``K = compact_every`` (most samples that fall, fall early) and before every ``K``-th query; a
compaction that finds none left ends the restart.  A call makes at most ``1 + restarts·(⌈log₂ K⌉ +
⌈queries/K⌉)`` host reads (:attr:`Square.host_reads`, reached when no restart ends early; the 1 is the base
class's input check): 58 at the default 5000 queries and ``K = 100``, where the reference makes 5000.
Compaction changes the work, not the result, as long as the model's output for an image does not depend on
the rest of its batch (a kernel whose rounding depends on the batch size can move a logit by an ulp and so
tip a near-tie).  The price is work on samples already fooled.  Measured on 200 Fashion-MNIST test images (the
tests' small CNN, 1000 queries, L∞ ε = 0.05 / L2 ε = 1), images evaluated beyond compacting at every query
(86 679 / 100 675): ``K`` = 10: +0.4 / +0.3 %, 50: +1.6 / +1.4 %, 100: +3.0 / +2.1 %, 200: +4.3 / +2.8 %,
500: +8.8 / +5.7 %; every 100th query alone, without the powers of two: +7.5 / +4.9 %.

**Half precision.**  With float16/bfloat16 images every candidate is evaluated as the image it would be returned
as (:meth:`~robustlr.attacks.base.Attack._as_returned`: rounded to their dtype toward ``x``, within ε), so a
candidate that fools the model is returned fooling it.

**Randomness** (:meth:`~robustlr.attacks.base.Attack._noise`, batch-independent): the start from purpose
``"start/…"``; the queries in blocks of :data:`QUERY_BLOCK` queries, one ``(N, QUERY_BLOCK, F)`` draw of
uniforms per block (``F = 2 + C`` for L∞: row, column, a sign per channel; ``F = 5 + C`` for L2: two
positions, a transposition, the signs), purpose ``"queries/b"``.  A uniform ``u`` of 24 bits picks one of
``n`` positions as ``⌊u·2²⁴·n / 2²⁴⌋`` in integer arithmetic (exact), and a sign or transposition as ``u < ½``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..checks import check_int, check_number
from .base import Attack
from .early_stop import compacts
from .projections import TINY, box_bounds, clip_unit, normalize_per_sample, per_sample_norm

__all__ = ["COMPACT_EVERY", "QUERY_BLOCK", "Square", "l2_pattern", "square_fraction", "square_side"]

COMPACT_EVERY = 100
"""Default number of queries between two compactions of the batch (one host read each)."""

QUERY_BLOCK = 100
"""Queries whose random draws are made at once (a fixed layout, so the draws do not depend on
``compact_every``)."""

_HALVINGS = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))
"""``(t, d)``: at rescaled query ``t`` up to this bound the square fraction is ``p_init / d``; 512 beyond."""

_L2_MIN_SIDE = 5
"""Smallest image side of the L2 attack: its start tiles are a fifth of the side."""

_BITS = 24
"""Random bits of one uniform of :meth:`Attack._noise` (``u·2²⁴`` is an integer)."""


def square_fraction(query: int, queries: int, p_init: float) -> float:
    """The fraction ``p_i`` of the image a square covers at ``query`` (0-based) of ``queries`` (see the
    module docstring): ``p_init`` halved at the paper's query counts, rescaled from 10 000 to ``queries``."""
    rescaled = int(query / queries * 10000)
    for bound, divisor in _HALVINGS:
        if rescaled <= bound:
            return p_init / divisor
    return p_init / 512


def square_side(fraction: float, height: int, width: int, norm: str) -> int:
    """The side of a square covering ``fraction`` of an ``height × width`` image: ``round(√(p·H·W))``, in
    ``[1, min(H, W)]`` for L∞; at least 3, odd, and at most ``min(H, W)`` for L2."""
    side = round(math.sqrt(fraction * height * width))
    if norm == "linf":
        return min(max(side, 1), height, width)
    side = max(side, 3)
    return min(side + 1 - side % 2, height, width)


def _rectangle(rows: int, cols: int) -> torch.Tensor:
    """Nested squares around ``(rows//2, cols//2)``: the entry at Chebyshev distance ``d`` is
    ``Σ_{k=d}^{K−1} (k+1)⁻²`` with ``K = max(rows//2, cols//2) + 1``; unit Frobenius norm (float64)."""
    reach = max(rows // 2, cols // 2) + 1
    weights = torch.arange(1, reach + 1, dtype=torch.float64).pow_(-2)
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k ≥ d} (k+1)⁻²
    dist_r = (torch.arange(rows) - rows // 2).abs()
    dist_c = (torch.arange(cols) - cols // 2).abs()
    out = tail[torch.maximum(dist_r[:, None], dist_c[None, :])]
    return out / torch.linalg.vector_norm(out) if out.numel() else out


def l2_pattern(side: int) -> torch.Tensor:
    """The L2 pattern ``η(s)`` of the paper (float64, ``side × side``, unit Frobenius norm): the rectangle of
    :func:`_rectangle` on the top ``⌊s/2⌋`` rows, its negative (of ``s − ⌊s/2⌋`` rows) below."""
    check_int("side", side, 1)
    top = side // 2
    pattern = torch.cat([_rectangle(top, side), -_rectangle(side - top, side)])
    return pattern / torch.linalg.vector_norm(pattern)


def _pick(u: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """Uniform integers in ``{0, …, count−1}`` from 24-bit uniforms ``u``: ``⌊(u·2²⁴)·count / 2²⁴⌋``, exact
    (``count`` an integer, or an int64 tensor of counts broadcast against ``u``)."""
    return (u * 2.0**_BITS).to(torch.int64).mul_(count) >> _BITS


class _Layout(NamedTuple):
    """What a query of one square side needs besides its draws, made once per side: the offsets ``0, …, s−1``,
    the number of positions of a window ``(H−s+1, W−s+1)`` (twice for L2: two windows), the channel indices
    ``(1, C, 1, 1)`` and, for L2, the pattern ``η(s)`` and its transpose flattened to ``(1, 1, s²)`` in the
    images' dtype."""

    span: torch.Tensor
    extents: torch.Tensor
    channels: torch.Tensor
    pattern: torch.Tensor | None
    pattern_t: torch.Tensor | None

    @classmethod
    def of(cls, side: int, like: torch.Tensor, norm: str) -> _Layout:
        _, channels, height, width = like.shape
        windows = 1 if norm == "linf" else 2
        span = torch.arange(side, device=like.device)
        extents = torch.tensor([height - side + 1, width - side + 1] * windows, device=like.device)
        channel = torch.arange(channels, device=like.device)[None, :, None, None]
        if norm == "linf":
            return cls(span, extents, channel, None, None)
        pattern = l2_pattern(side).to(device=like.device, dtype=like.dtype)
        return cls(span, extents, channel, pattern.reshape(1, 1, -1), pattern.T.reshape(1, 1, -1))


class Square(Attack):
    """The Square attack: black-box random search over squares (see the module docstring).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits; only ever evaluated, never differentiated.
        eps: budget ``ε ≥ 0`` in ``norm``.
        norm: ``"linf"`` (default) or ``"l2"``; L2 needs images of at least 5×5.
        queries: number of random-search queries per restart (≥ 1); with the start, a restart evaluates the
            model at most ``1 + queries`` times per sample (AutoAttack's ``n_queries``).
        p_init: the fraction ``p_0 ∈ (0, 1]`` of the image the first squares cover (0.8 in AutoAttack).
        restarts: independent runs; per sample the first that fools the model is kept (see :class:`Attack`).
        seed: seed of the random draws.
        loss_scale: accepted for the interface every attack shares; Square computes no gradient, so it has
            no effect.
        compact_every: queries between two compactions of the batch to its unfooled samples (one host read
            each, see the module docstring); it changes the work, never the result.
    """

    name = "square"
    early_stop = True  # a restart drops the samples it fools (module docstring); restarts skip those fooled before

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int | None = None,
        *,
        loss_scale: float | None = None,
        compact_every: int = COMPACT_EVERY,
    ) -> None:
        super().__init__(model, eps, norm, loss="margin", restarts=restarts, seed=seed, loss_scale=loss_scale)
        self.queries = check_int("queries", queries, 1)
        self.p_init = check_number("p_init", p_init, 0.0, strict=True)
        if self.p_init > 1:
            raise ValueError(f"p_init must be a fraction of the image in (0, 1]; got {p_init!r}")
        self.compact_every = check_int("compact_every", compact_every, 1)

    @property
    def host_reads(self) -> int:
        """The most host reads one call makes: the input check and, per restart, one per compaction
        (at most ``⌈log₂ K⌉ + ⌈queries/K⌉`` with ``K = compact_every``)."""
        return 1 + self.restarts * sum(map(self._compacts, range(self.queries)))

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "queries": self.queries, "p_init": self.p_init}

    def check_fits(self, shape: tuple[int, ...], classes: int) -> None:
        """:meth:`Attack.check_fits`, and L2 images of at least 5×5."""
        super().check_fits(shape, classes)
        self._check_side(shape)

    def _check_side(self, shape: tuple[int, ...]) -> None:
        if self.norm == "l2" and min(shape[-2:]) < _L2_MIN_SIDE:
            raise ValueError(f"x must have images of at least {_L2_MIN_SIDE}×{_L2_MIN_SIDE} for norm='l2' (the start "
                             f"tiles are a fifth of the side), got {tuple(shape)}: norm='linf' has no minimum")

    def _compacts(self, query: int) -> bool:
        """Whether the batch is compacted (one host read) before ``query``: at 0, at the powers of two below
        ``compact_every`` and at its multiples."""
        return compacts(query, self.compact_every)

    # ------------------------------------------------------------------ the search
    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        _, channels, height, width = x.shape
        self._check_side(tuple(x.shape))
        fields = (2 if self.norm == "linf" else 5) + channels
        with torch.no_grad():
            x_best = self._start(x, restart)
            best = self._objective(self._logits(x_best), y, targeted)
            out, rows = x_best, None  # rows: indices in the batch of the current (compacted) samples
            xs, ys, box = x, y, box_bounds(x, self.eps) if self.norm == "linf" else None
            layouts: dict[int, _Layout] = {}
            draws = x.new_empty(0)
            for query in range(self.queries):
                if self._compacts(query):
                    out = x_best if rows is None else out.index_copy_(0, rows, x_best)
                    unfooled = best < 0
                    left = int(unfooled.sum())  # the compaction's host read
                    if left == 0:
                        return self._fit(out - x, x)
                    if left < len(best):
                        keep = torch.nonzero_static(unfooled, size=left).squeeze(1)
                        rows = keep if rows is None else rows[keep]
                        xs, ys, x_best, best = x[rows], y[rows], x_best[keep], best[keep]
                        box = None if box is None else (box[0][keep], box[1][keep])
                if query % QUERY_BLOCK == 0:  # a shorter last block draws the same words as a full one
                    block = (min(QUERY_BLOCK, self.queries - query), fields)
                    draws = self._noise("unit", block, restart, x, f"queries/{query // QUERY_BLOCK}")
                u = draws[:, query % QUERY_BLOCK] if rows is None else draws[rows, query % QUERY_BLOCK]
                side = square_side(square_fraction(query, self.queries, self.p_init), height, width, self.norm)
                if side not in layouts:
                    layouts[side] = _Layout.of(side, x, self.norm)
                if self.norm == "linf":
                    cand = self._linf_candidate(xs, x_best, box, u, layouts[side])
                else:
                    cand = self._l2_candidate(xs, x_best, u, layouts[side])
                cand = self._as_returned(cand, xs)  # half-precision images: the candidate as it would be returned
                score = self._objective(self._logits(cand), ys, targeted)  # −m: > 0 once fooled
                better = (best < 0) & (score > best)
                best = torch.where(better, score, best)
                x_best = torch.where(better[:, None, None, None], cand, x_best)
            out = x_best if rows is None else out.index_copy_(0, rows, x_best)
            return self._fit(out - x, x)

    def _start(self, x: torch.Tensor, restart: int) -> torch.Tensor:
        """The first iterate: L∞ vertical stripes, L2 a grid of ``±η`` tiles at ``‖δ‖₂ = ε``."""
        n, channels, height, width = x.shape
        if self.norm == "linf":
            lo, hi = box_bounds(x, self.eps)
            signs = self._noise("unit", (channels, 1, width), restart, x, "start/signs") < 0.5
            return torch.where(signs, lo, hi, out=torch.empty_like(x))  # in x's memory layout
        side = min(height, width) // 5
        grid_h, grid_w = height // side, width // side
        top, left = (height - grid_h * side) // 2, (width - grid_w * side) // 2
        pattern = l2_pattern(side).to(device=x.device, dtype=x.dtype)
        flip = self._noise("unit", (1, grid_h, grid_w, 1, 1), restart, x, "start/transpose") < 0.5
        signs = self._noise("unit", (channels, grid_h, grid_w, 1, 1), restart, x, "start/signs") < 0.5
        tiles = torch.where(flip, pattern.T, pattern) * torch.where(signs, -1.0, 1.0).to(x.dtype)
        delta = torch.zeros_like(x)
        delta[:, :, top:top + grid_h * side, left:left + grid_w * side] = \
            tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, channels, grid_h * side, grid_w * side)
        return clip_unit(x + self.eps * normalize_per_sample(delta, "l2"))

    @staticmethod
    def _window_at(u: torch.Tensor, layout: _Layout, width: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows of side ``s`` at uniform positions from the uniforms ``u`` (``(N, k)``: a top and a left per
        window, ``k/2`` windows): their tops and lefts ``(N, k)``, their rows and columns ``(N, k, s)``, and the
        flat positions of their entries, ``(N, 1, k/2·s²)``, window after window, row-major in each."""
        starts = _pick(u, layout.extents)
        lines = starts[:, :, None] + layout.span
        at = lines[:, 0::2, :, None] * width + lines[:, 1::2, None, :]
        return starts, lines, at.view(u.shape[0], 1, -1)

    def _linf_candidate(self, x: torch.Tensor, x_best: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor],
                        u: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """``x_best`` with one window set to the box vertex ``clip(x ± ε)`` (a sign per channel), written on the
        window's entries only (advanced indexing: any memory layout of the images is kept)."""
        n, channels = x.shape[:2]
        _, lines, _ = self._window_at(u[:, :2], layout, x.shape[3])
        at = (torch.arange(n, device=x.device)[:, None, None, None], layout.channels,
              lines[:, None, 0, :, None], lines[:, None, 1, None, :])  # (N, C, s, s) after broadcasting
        vertex = torch.where((u[:, 2:] < 0.5)[:, :, None, None], box[0][at], box[1][at])
        return x_best.clone().index_put_(at, vertex)

    def _l2_candidate(self, x: torch.Tensor, x_best: torch.Tensor, u: torch.Tensor, layout: _Layout
                      ) -> torch.Tensor:
        """``clip(x + ε·δ'/‖δ'‖₂)``: mass of ``W₂`` moved into ``W₁`` with a fresh ``±η`` (module docstring).

        Computed on the two windows' ``s × s`` entries (gathered at their flat positions), not on masks of the
        whole image: ``‖δ_{c,W₁∪W₂}‖² = ‖δ_{c,W₁}‖² + Σ_{W₂∖W₁} δ_c²``; ``δ'`` is ``δ`` with ``W₂`` zeroed, then ``ν``
        written into ``W₁``.  Both windows are handled in one tensor (their rows and columns stacked), so a query
        runs a fixed, small number of operators (a kernel launch each on a GPU)."""
        n, channels, height, width = x.shape
        side, area = layout.span.numel(), layout.pattern.numel()
        delta = x_best - x
        # (N, 4): top and left of W₁, of W₂; (N, 4, s) their rows and columns; (N, 1, 2s²) their entries
        starts, lines, at = self._window_at(u[:, :4], layout, width)
        flat = delta.reshape(n, channels, height * width)
        both = flat.gather(2, at.expand(n, channels, -1))
        old, gone = both[..., :area], both[..., area:]  # δ on W₁ and on W₂, (N, C, s²)
        # the entries of W₂ that also lie in W₁ (counted once in the union)
        offset = lines[:, 2:] - starts[:, :2, None]
        inside = (offset >= 0) & (offset < side)
        shared = (inside[:, 0, :, None] & inside[:, 1, None, :]).view(n, 1, area)
        coins = u[:, 4:] < 0.5  # a transposition, then a sign per channel
        eta = torch.where(coins[:, :1, None], layout.pattern_t, layout.pattern)  # (N, 1, s²)
        old_norm = torch.linalg.vector_norm(old, dim=2, keepdim=True)
        fresh = torch.where(coins[:, 1:, None], -eta, eta) + old / (old_norm + TINY)
        spare = (self.eps**2 - per_sample_norm(delta, "l2").square()).clamp_(min=0.0)[:, None, None]
        union = old_norm.square() + gone.square().masked_fill_(shared, 0.0).sum(dim=2, keepdim=True)
        size = (spare / channels + union).sqrt_()
        fresh = fresh / (torch.linalg.vector_norm(fresh, dim=2, keepdim=True) + TINY) * size
        at1, at2 = (part.expand(n, channels, -1) for part in (at[..., :area], at[..., area:]))
        moved = flat.clone().scatter_(2, at2, 0.0).scatter_(2, at1, fresh).view(n, channels, height, width)
        return clip_unit(x + self.eps * normalize_per_sample(moved, "l2"))
