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

A step costs one forward and backward pass of the model, three products of an image-sized tensor with a
factor (``UV``, ``M Vᵀ``, ``Uᵀ M``, with ``M`` the gradient behind the clip) and a few elementwise passes over
two image-sized buffers reused by every step: the backward pass through the clip and (for L2) the
rescaling is written out (:meth:`LoRaPGD._l2_factor_grads`); L∞'s rescaling goes through autograd.
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

    def check_fits(self, shape: tuple[int, ...], classes: int) -> None:
        """:meth:`Attack.check_fits`, and a rank that fits images of ``shape`` (:meth:`resolved_rank`)."""
        super().check_fits(shape, classes)
        self.resolved_rank(shape)

    def state_bytes(self, shape: tuple[int, ...], element_size: int = 4) -> int:
        """Bytes of the factors ``U, V`` for a batch of ``shape``: ``N·C·r·(H+W)`` elements (PGD: ``N·C·H·W``)."""
        n, c, h, w = shape
        return n * c * self.resolved_rank(shape) * (h + w) * element_size

    def perturbation(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The applied perturbation ``δ̂`` (before clipping) of factors ``U, V``: on the ε-sphere, rank ≤ r.

        ``D / ‖D‖`` is formed before the product with ``ε``, so a large representable ε cannot overflow.
        """
        return self._direction(u, v).mul_(self.eps)  # in place on the fresh quotient (autograd keeps D and the norm)

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
        ut = u.mT.contiguous()  # the steps keep Uᵀ (N, C, r, H): their products are fastest with both factors r × n
        # two image-sized buffers reused by every step: ``p`` (D, then x + ε·D/‖D‖, then the clip's mask, then
        # the gradient behind the clip) and the iterate ``x_adv`` fed to the model
        p = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        x_adv = torch.empty_like(x)
        factor_grads = self._l2_factor_grads if self.norm == "l2" else self._autograd_factor_grads
        for _ in range(steps):
            g_ut, g_v = factor_grads(x, y, targeted, ut, v, p, x_adv)
            ut.add_(normalize_per_sample(g_ut, "l2"))
            v.add_(normalize_per_sample(g_v, "l2"))
        return ut.mT, v

    def _masked_grad(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, p: torch.Tensor,
                     x_adv: torch.Tensor) -> torch.Tensor:
        """With ``p = x + ε·d`` on entry: the gradient of the loss at ``x_adv = clip_[0,1](p)`` with respect to
        ``p`` (the clip's Jacobian: the loss gradient where ``0 ≤ p ≤ 1``, zero elsewhere, as autograd's clamp
        has it), written into ``p``, which it returns.  ``x_adv`` is the iterate's buffer; with half-precision
        images the model is fed it as it would be returned (:meth:`~robustlr.attacks.base.Attack._as_returned`,
        gradient straight through), so the factors LoRa-APGD keeps for fooling the model fool it as returned."""
        torch.clamp(p, 0.0, 1.0, out=x_adv)
        x_adv.requires_grad_(True)
        _, (grad,) = self._loss_and_grad(self._as_returned(x_adv, x), y, targeted, [x_adv])
        x_adv.requires_grad_(False)  # the graph is freed: the buffer is rewritten at the next step
        torch.eq(p, x_adv, out=p)  # 1 where the clip let p through (0 ≤ p ≤ 1), else 0: float arithmetic only
        return torch.mul(grad, p, out=p)

    def _l2_factor_grads(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool, ut: torch.Tensor, v: torch.Tensor,
        p: torch.Tensor, x_adv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradients ``(G_Uᵀ, G_V)`` of the L2 objective with respect to ``(Uᵀ, V)``, up to the positive factor
        ``ε``, with the backward pass of ``D ↦ D/(‖D‖ + tiny)`` written out (Jacobian
        ``(I − D Dᵀ/(‖D‖(‖D‖+tiny)))/(‖D‖+tiny)``).

        With ``a = 1/(‖D‖ + tiny)`` and ``M`` the gradient behind the clip (:meth:`_masked_grad`), the
        gradient with respect to ``D`` is ``a·M − (⟨M, D⟩ a²/‖D‖)·D`` (the second term 0 where ``D = 0``, as
        autograd's norm has it), and ``D = UV`` gives

            G_Uᵀ = a·V Mᵀ − c·(V Vᵀ) Uᵀ,   G_V = a·Uᵀ M − c·(UᵀU) V,   c = ⟨M, D⟩ a²/‖D‖,

        with ``⟨M, D⟩ = ⟨V Mᵀ, Uᵀ⟩``: only the two products with ``M`` and one with ``U·V`` touch image-sized
        tensors.  The factor ``ε`` of ``x + ε·D/‖D‖`` is left out of the backward pass: the updates normalise
        the gradients per sample, so it does not change them, and with it a large ε overflowed the
        ``1/tiny`` of the ``V = 0`` start.
        """
        d = torch.matmul(ut.mT, v, out=p)
        norm = per_sample_norm(d, "l2")
        inv = 1.0 / (norm + TINY)
        # ε·a is finite: a ≤ 1/tiny = 1e12 and the L2 budget is below 1e19 (precision.check_budget)
        torch.addcmul(x, d, (inv * self.eps)[:, None, None, None], out=p)
        masked = self._masked_grad(x, y, targeted, p, x_adv)
        v_mt = v @ masked.mT
        ut_m = ut @ masked
        inner = (v_mt * ut).sum(dim=(1, 2, 3))
        minus_c = torch.where(norm > 0, inner * inv * inv / norm, torch.zeros_like(norm)).neg_()[:, None, None, None]
        inv = inv[:, None, None, None]
        g_ut = torch.addcmul(v_mt.mul_(inv), _gram_product(v @ v.mT, ut), minus_c, out=v_mt)
        g_v = torch.addcmul(ut_m.mul_(inv), _gram_product(ut @ ut.mT, v), minus_c, out=ut_m)
        return g_ut, g_v

    def _autograd_factor_grads(
        self, x: torch.Tensor, y: torch.Tensor, targeted: bool, ut: torch.Tensor, v: torch.Tensor,
        p: torch.Tensor, x_adv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradients ``(G_Uᵀ, G_V)``, up to the positive factor ``ε`` (see :meth:`_l2_factor_grads`), by
        autograd through :meth:`_direction` (any norm; the L∞ attack's path)."""
        ut = ut.detach().requires_grad_(True)
        v = v.detach().requires_grad_(True)
        direction = self._direction(ut.mT, v)
        torch.add(x, direction.detach(), alpha=self.eps, out=p)
        masked = self._masked_grad(x, y, targeted, p, x_adv)
        g_ut, g_v = torch.autograd.grad(direction, [ut, v], masked)
        return g_ut, g_v

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


_GRAM_LOOP_RANK = 4
"""Up to this rank :func:`_gram_product` multiplies by broadcast multiply-adds instead of ``bmm``."""


def _gram_product(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``g @ t`` of batched small square ``g`` (…, r, r) and wide ``t`` (…, r, n).

    For ``r ≤ 4`` it is ``Σ_k g[…, :, k] ⊗ t[…, k, :]``, ``r`` multiply-adds over the rows of ``t``: torch's CPU
    ``bmm`` spends ~0.3 µs per matrix on products this small, several times their arithmetic (2.2× faster at
    512×3 matrices of r = 3, n = 32 on one thread); larger ranks use ``bmm``.
    """
    if g.shape[-1] > _GRAM_LOOP_RANK:
        return g @ t
    out = g[..., :, :1] * t[..., :1, :]
    for k in range(1, g.shape[-1]):
        out.addcmul_(g[..., :, k:k + 1], t[..., k:k + 1, :])
    return out
