"""LoRa-PGD: the low-rank PGD attack of Savostianova, Zangrando & Tudisco (arXiv 2410.12607).

The perturbation of every image channel is a product of two factors of rank ``r``:
``D_{b,c} = U_{b,c} V_{b,c}`` with ``U ∈ R^{N×C×H×r}``, ``V ∈ R^{N×C×r×W}``.  The applied perturbation is
rescaled onto the budget's sphere, per sample,

    L2 (the paper):  δ̂_b = ε · D_b / ‖D_b‖_F                       (‖·‖_F over all C·H·W entries)
    L∞ (extension):  δ̂_{b,c} = ε · D_{b,c} / max_{ij} |D_{b,c,ij}|   (per channel)

and ``x_adv = clip_[0,1](x + δ̂)``.  Rescaling keeps every channel of δ̂ at rank ≤ r (before the clip) and
puts it on the sphere, so ``‖δ̂‖ ≤ ε`` holds by construction.  Each step ascends the loss with gradients
taken at the same point and normalised per sample (no step size):

    U ← U + G_U / ‖G_U‖_F,   V ← V + G_V / ‖G_V‖_F.

Because the loss is invariant to ``U → aU`` (``a > 0``), ``⟨G_U, U⟩ = 0`` and ``‖U‖²`` grows by exactly 1
per step: an implicit step-size decay ∝ 1/√k that depends on the initial scale, hence the unit-norm
initialisation.  Inits: ``"lora"`` (the paper's default) — ``U`` Gaussian rescaled to ``‖U_b‖_F = 1``,
``V = 0`` (so δ = 0 and ``U`` does not move at the first step); ``"svd"`` (the paper's "fgsm" warm start) —
the best rank-r approximation of a one-step gradient perturbation ``Δ₀ = P Σ Qᵀ``, split as
``U₀ = P_r Σ_r^{1/2}``, ``V₀ = Σ_r^{1/2} Q_rᵀ``.

Restarts beyond the first always use the ``"lora"`` init (the ``"svd"`` start is deterministic).
The L∞ variant is robustlr's own extension (the paper treats L2 only); docs/attacks.md reports how it
compares with PGD-L∞.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_int
from .base import Attack
from .precision import work_dtype
from .projections import (TINY, channel_svd, check_rank_spec, clip_unit, fit_budget, normalize_per_sample,
                          per_sample_norm, resolve_rank)

__all__ = ["LoRaPGD", "INITS"]

INITS = ("lora", "svd")


class LoRaPGD(Attack):
    """Low-rank PGD: per-image, per-channel rank-``rank`` perturbations ``U·V`` (see the module docstring).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits.
        eps: budget ``ε ≥ 0`` (L2 by default, as in the paper).
        rank: per-channel rank: an integer number (``int``, ``np.int64``) in ``[1, min(H, W)]`` or a
            fraction of ``min(H, W)`` in ``(0, 1]`` (any other real number, ``r = round(f·min(H, W))``, at
            least 1).
        norm: ``"l2"`` (the paper) or ``"linf"`` (extension).
        steps: number of updates of the factors (the paper's code uses 10).
        init: ``"lora"`` (default) or ``"svd"``.
        restarts: independent runs, best per sample kept.
        seed: seed of the random factor ``U₀``.
        loss: ``"ce"`` or ``"margin"``.
        loss_scale: factor of the objective before differentiation (see :class:`~robustlr.attacks.base.Attack`).
    """

    name = "lora-pgd"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float = 0.5,
        rank: int | float = 0.1,
        norm: str = "l2",
        steps: int = 10,
        init: str = "lora",
        restarts: int = 1,
        seed: int | None = None,
        *,
        loss: str = "ce",
        loss_scale: float | None = None,
    ) -> None:
        super().__init__(model, eps, norm, loss=loss, restarts=restarts, seed=seed, loss_scale=loss_scale)
        self.rank = check_rank_spec(rank)
        self.steps = check_int("steps", steps, 1)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init

    def _describe(self) -> dict[str, object]:
        return {**super()._describe(), "rank": self.rank, "steps": self.steps, "init": self.init}

    # ------------------------------------------------------------------ public helpers
    def resolved_rank(self, shape: tuple[int, ...]) -> int:
        """The integer per-channel rank used on images of ``shape`` (``(..., H, W)``)."""
        return resolve_rank(self.rank, min(shape[-2:]))

    def state_bytes(self, shape: tuple[int, ...], element_size: int = 4) -> int:
        """Bytes of the factors ``U, V`` for a batch of ``shape``: ``N·C·r·(H+W)`` elements (PGD: ``N·C·H·W``)."""
        n, c, h, w = shape
        return n * c * self.resolved_rank(shape) * (h + w) * element_size

    def perturbation(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The applied perturbation ``δ̂`` (before clipping) of factors ``U, V``: on the ε-sphere, rank ≤ r.

        ``D / ‖D‖`` is formed before the product with ``ε``, so a large representable ε cannot overflow.
        """
        return self._direction(u, v) * self.eps

    def _direction(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``D / ‖D‖`` of ``D = U·V``: the perturbation on the unit sphere of the attack's norm."""
        d = u @ v
        if self.norm == "l2":
            scale = per_sample_norm(d, "l2")[:, None, None, None]
        else:
            scale = d.abs().amax(dim=(-2, -1), keepdim=True)
        return d / (scale + TINY)

    def images(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The adversarial images of factors ``U, V`` on clean images ``x``: ``clip_[0,1](x + δ̂)`` in ``x``'s
        dtype, with ``‖x_adv − x‖ ≤ ε`` held in that dtype (the arithmetic runs in float32 or wider,
        :func:`~robustlr.attacks.projections.fit_budget`)."""
        dtype = work_dtype(x.dtype)
        delta = self.perturbation(u.detach().to(dtype), v.detach().to(dtype))
        return fit_budget(delta, x.detach().to(dtype), self.eps, self.norm, x.dtype)

    def factors(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors ``(U, V)`` after ``steps`` updates (default ``self.steps``; 0 gives the init) of the
        first restart, in the working dtype (float32 for float16/bfloat16 images)."""
        n_steps = self.steps if steps is None else check_int("steps", steps, 0)
        return self._guarded(x, y, targeted, lambda xx, yy, t: self._optimize(xx, yy, t, 0, n_steps))

    # ------------------------------------------------------------------ the algorithm
    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        u, v = self._optimize(x, y, targeted, restart, self.steps)
        return self._fit(self.perturbation(u, v), x)

    def _optimize(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.resolved_rank(tuple(x.shape))
        if self.init == "svd" and restart == 0:
            u, v = self._svd_init(x, y, targeted, r)
        else:
            u, v = self._lora_init(x, r, restart)
        for _ in range(steps):
            u.requires_grad_(True)
            v.requires_grad_(True)
            x_adv = clip_unit(x + _ScaledForward.apply(self._direction(u, v), self.eps))
            _, (g_u, g_v) = self._loss_and_grad(x_adv, y, targeted, wrt=[u, v])
            u = u.detach() + normalize_per_sample(g_u, "l2")
            v = v.detach() + normalize_per_sample(g_v, "l2")
        return u.detach(), v.detach()

    def _lora_init(self, x: torch.Tensor, r: int, restart: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        u = normalize_per_sample(self._noise("normal", (c, h, r), restart, x), "l2")
        v = torch.zeros(n, c, r, w, dtype=x.dtype, device=x.device)
        return u, v

    def _svd_init(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = x.clone().requires_grad_(True)
        _, (grad,) = self._loss_and_grad(x0, y, targeted)
        delta0 = clip_unit(x + self.eps * normalize_per_sample(grad, self.norm)) - x
        p, s, qh = channel_svd(delta0, full=True)
        root = s[..., :r].sqrt()
        u = (p[..., :r] * root[..., None, :]).to(x.dtype)
        v = (root[..., :, None] * qh[..., :r, :]).to(x.dtype)
        return u, v


class _ScaledForward(torch.autograd.Function):
    """``t ↦ ε·t`` whose backward passes the gradient through unscaled.

    The factor updates normalise their gradients per sample, so a positive global factor does not change
    them; leaving ``ε`` out of the backward keeps it finite for any representable ε (with ε in it, the
    ``1/TINY`` of the ``V = 0`` start times a large ε overflowed and the steps became 0 or NaN).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        return t * eps

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None
