"""FAB, the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a fast
adaptive boundary attack", ICML 2020, arXiv 1907.02044), in L∞ and L2, targeted (FAB-T, as AutoAttack runs it)
or untargeted.

FAB looks for the adversarial example of least norm, then reports it at the budget ε.  One step from the
iterate ``x₁`` (``x₀`` the clean image, ``y`` its label, ``t`` the class attacked):

1. linearise the boundary between ``y`` and ``t``: one forward and the gradient of ``f = z_t − z_y``
   (targeted; untargeted: the Jacobian of every ``z_j − z_y`` and ``t`` the class whose linearised boundary
   is nearest, ``|f_j| / ‖∇f_j‖_*``, :func:`~robustlr.attacks.projections.hyperplane_distance`), giving the
   hyperplane ``π = {z : f + ⟨∇f, z − x₁⟩ = 0}``;
2. project ``x₁`` and ``x₀`` onto ``π ∩ [0,1]^d`` in the attack's norm
   (:func:`~robustlr.attacks.projections.hyperplane_box_step`): steps ``δ₁``, ``δ₂``;
3. take the biased convex combination, overshooting by ``η``:
   ``x₁ ← clip_[0,1]((1 − α)(x₁ + η δ₁) + α(x₀ + η δ₂))``, ``α = min(‖δ₁‖ / (‖δ₁‖ + ‖δ₂‖), α_max)``
   (norms floored at 1e-8);
4. if the model now misclassifies ``x₁``: keep it per sample when ``‖x₁ − x₀‖`` is the smallest so far, and
   step back towards the clean image, ``x₁ ← x₀ + β(x₁ − x₀)``.

With half-precision images the new ``x₁`` is rounded to their dtype before the check (the arithmetic is in
float32): FAB's points lie just across the boundary, and a float32 point that fools the model could stop fooling
it once rounded to the image it is returned as (without this, a small CNN in bfloat16 at L2: 6 of the 30 points
found within ε still fooled it as returned; tests/test_attacks_precision.py).

Each step costs one forward and one backward (untargeted: one backward per class), plus the forward that
checks the new iterate.  Only the gradient's direction enters (the projections are invariant to a positive
factor of ``w`` and ``b``), so FAB is not fooled by a model whose softmax saturates or whose gradient is
scaled down: it needs no loss, and ``loss_scale`` only guards float16 gradients against underflow.

Targets and restarts follow AutoAttack's ``FABAttack_PT`` (pyautoattack 0.2.0, ``fab_base.py``):

* targeted: the target is the class of the ``k``-th largest clean logit, ``k = 2 … n_target_classes + 1``
  (all other classes if the model has fewer), one after the other, each on the points not yet broken;
* restart 0 starts from ``x₀``; restart ``r > 0`` from a random point at distance ``ε/2`` in the attack's
  norm (uniform entries scaled to L∞ norm ``ε/2``, or a Gaussian direction of L2 norm ``ε/2``), clipped to
  ``[0,1]``, drawn afresh for every target;
* only clean-correct points are attacked; the result is the least-norm adversarial example found where its
  norm is at most ``ε``, else the clean image ``x₀`` (so the robust accuracy counts a point as broken iff FAB
  found a misclassified point within ε of it);
* there is no final search: the backward step ``β`` refines the minimum instead.

AutoAttack loops over targets, then restarts; here restarts are the outer loop (:class:`Attack`'s
restarts, per sample the first that fools the model is kept), targets the inner one.  A point's runs do
not depend on each other, so a point is broken by the same set of runs and the robust accuracy is the same.

Hyper-parameters (the paper's and AutoAttack's): ``α_max = 0.1``, ``η = 1.05``, ``β = 0.9``, 100 steps; FAB-T
in AutoAttack: 9 target classes, 1 restart.

Host round trips: the input check, then one read per target of how many points are still unbroken (only
those are attacked, as AutoAttack does); the steps read nothing, but with ``early_stop=True``, which reads how
many points are left at each compaction (:func:`~robustlr.attacks.early_stop.compacts`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import check_flag, check_int, check_number
from .base import Attack
from .early_stop import EVERY, Shrinking, compacts, pending
from .projections import TINY, hyperplane_box_step, hyperplane_distance, per_sample_norm

__all__ = ["FAB"]

_NORM_FLOOR = 1e-8
"""Floor of the projection steps' norms in the bias ``α`` (AutoAttack's), so ``α`` is defined at ``δ = 0``."""


class FAB(Attack):
    """The fast adaptive boundary attack (see the module docstring for the algorithm and its defaults).

    Args:
        model: maps ``[0,1]`` images to ``(N, num_classes)`` logits.
        eps: budget ``ε ≥ 0`` in ``norm``: the result is the least-norm adversarial example found if its norm
            is at most ε, else the clean image; the random starts lie at distance ε/2.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: steps per target and restart (≥ 1; AutoAttack: 100).
        targeted: FAB-T (default), attacking the classes of the 2nd … (n_target_classes+1)-th largest clean
            logits in turn; ``False``: untargeted, the nearest linearised boundary at every step.  The call
            always takes the *true* labels: ``atk(x, y)``.
        n_target_classes: number of target classes of FAB-T (≥ 1; at most ``num_classes − 1`` are used).
        restarts: runs per target (≥ 1); restart 0 starts at the clean image, the others at random points.
        seed: seed of the random starts.
        alpha_max: largest weight ``α`` of the clean image's projection, in ``(0, 1]``.
        eta: overshoot ``η ≥ 1`` of the projection steps.
        beta: backward step ``β ∈ (0, 1)`` towards the clean image after a success.
        loss_scale: factor of the logit difference before differentiation (float16 models; see
            :class:`Attack`); FAB's steps do not depend on it.
        early_stop: drop a point from the batch once an adversarial example within ε of it is found
            (:mod:`robustlr.attacks.early_stop`): the same points are broken, with less work; a broken point's
            result is then the least-norm one found by the time it was dropped, not by the last step.
    """

    name = "fab"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        targeted: bool = True,
        n_target_classes: int = 9,
        restarts: int = 1,
        seed: int | None = None,
        *,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        loss_scale: float | None = None,
        early_stop: bool = False,
    ) -> None:
        super().__init__(model, eps, norm, restarts=restarts, seed=seed, loss_scale=loss_scale)
        self.steps = check_int("steps", steps, 1)
        self.early_stop = check_flag("early_stop", early_stop)
        if not isinstance(targeted, bool):
            raise ValueError(f"targeted must be True (FAB-T) or False (untargeted FAB), got {targeted!r}")
        self.targeted = targeted
        self.n_target_classes = check_int("n_target_classes", n_target_classes, 1)
        self.alpha_max = check_number("alpha_max", alpha_max, 0.0, strict=True)
        if self.alpha_max > 1:
            raise ValueError(f"alpha_max must be in (0, 1] (a convex weight), got {alpha_max!r}")
        self.eta = check_number("eta", eta, 1.0)
        self.beta = check_number("beta", beta, 0.0, strict=True)
        if self.beta >= 1:
            raise ValueError(f"beta must be in (0, 1) (a step back towards the clean image), got {beta!r}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Adversarial examples for images ``x`` with their *true* labels ``y`` (see the class docstring).

        ``targeted=True`` is refused: FAB-T chooses its target classes itself from the clean logits; build
        ``FAB(..., targeted=True)`` (the default) instead.
        """
        if targeted is not False:
            raise ValueError(f"targeted must be False in a FAB call, got {targeted!r}: y holds the true labels and "
                             f"FAB-T chooses its target classes itself (the {self.n_target_classes} largest clean "
                             "logits after the true one); use FAB(..., targeted=True) for the targeted attack")
        return super().__call__(x, y)

    def _describe(self) -> dict[str, object]:
        described = {key: value for key, value in super()._describe().items() if key != "loss"}
        return {**described, "steps": self.steps, "targeted": self.targeted,
                "n_target_classes": self.n_target_classes, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta, **({"early_stop": True} if self.early_stop else {})}

    def state_bytes(self, shape: tuple[int, ...], element_size: int = 4) -> int:
        """The iterate and the best point so far: two tensors of the batch's shape."""
        return 2 * super().state_bytes(shape, element_size)

    # ------------------------------------------------------------------ one restart
    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        """Restart ``restart``: against every target in turn (untargeted: once), on the points that are
        classified correctly and not yet broken; returns the result of the call's convention."""
        with torch.no_grad():
            logits = self._logits(x)
        num_classes = logits.shape[1]
        self._check_labels(num_classes)
        broken = logits.argmax(dim=1) != y
        if self.targeted:
            order = logits.argsort(dim=1, descending=True)
            count = min(self.n_target_classes, num_classes - 1)
            goals: list[torch.Tensor | None] = [order[:, k] for k in range(1, count + 1)]
        else:
            goals = [None]
        x_adv = x.clone()
        for index, goal in enumerate(goals):
            rows = pending(broken)
            if rows is None:
                break
            start = x if restart == 0 else self._start(x, restart, f"start/target {index}")
            found, fooled = self._descend(x[rows], y[rows], None if goal is None else goal[rows], start[rows])
            x_adv[rows] = torch.where(fooled[:, None, None, None], found, x[rows])
            broken[rows] = fooled
        return self._fit(x_adv - x, x)

    def _start(self, x: torch.Tensor, restart: int, purpose: str) -> torch.Tensor:
        """A random start at distance ``ε/2`` from ``x`` in the attack's norm, clipped to ``[0, 1]``."""
        kind = "uniform" if self.norm == "linf" else "normal"
        direction = self._noise(kind, tuple(x.shape[1:]), restart, x, purpose)
        length = per_sample_norm(direction, self.norm) + TINY
        return (x + direction * (self.eps / 2 / length)[:, None, None, None]).clamp_(0.0, 1.0)

    def _descend(self, x0: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
                 start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` FAB steps from ``start`` (see the module docstring); returns the least-norm misclassified
        point found (``x0`` where none) and whether it lies within ε of ``x0``."""
        view = (-1,) + (1,) * (x0.dim() - 1)
        x1 = start.clone()
        best = x0.clone()
        best_norm = torch.full((x0.shape[0],), float("inf"), dtype=x0.dtype, device=x0.device)
        shrinking = Shrinking()
        for step in range(self.steps):
            if self.early_stop and step and compacts(step, EVERY):
                keep = shrinking.shrink(best_norm <= self.eps, best, best_norm)
                if keep is not None:
                    x0, y, x1, best, best_norm = (t[keep] for t in (x0, y, x1, best, best_norm))
                    goal = None if goal is None else goal[keep]
                    if not keep.numel():
                        break
            n = x0.shape[0]
            gap, normal = self._linearise(x1, y, goal)
            with torch.no_grad():
                offset = (normal * x1).sum(dim=tuple(range(1, x1.dim()))) - gap
                both = hyperplane_box_step(torch.cat([x1, x0]), normal.repeat(2, *(1,) * (x1.dim() - 1)),
                                           offset.repeat(2), self.norm)
                lengths = per_sample_norm(both, self.norm).clamp_(min=_NORM_FLOOR)
                alpha = (lengths[:n] / (lengths[:n] + lengths[n:])).clamp_(max=self.alpha_max).view(view)
                x1 = ((x1 + self.eta * both[:n]) * (1 - alpha) + (x0 + self.eta * both[n:]) * alpha).clamp_(0.0, 1.0)
                x1 = self._representable(x1)  # what is checked is what is returned (half-precision inputs)
                fooled = self._logits(x1).argmax(dim=1) != y
                dist = per_sample_norm(x1 - x0, self.norm)
                better = fooled & (dist < best_norm)
                best = torch.where(better.view(view), x1, best)
                best_norm = torch.where(better, dist, best_norm)
                x1 = torch.where(fooled.view(view), x0 + self.beta * (x1 - x0), x1)
        best, best_norm = shrinking.complete(best, best_norm)
        return best, best_norm <= self.eps

    def _linearise(self, x1: torch.Tensor, y: torch.Tensor,
                   goal: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearised boundary at ``x1``: per sample ``(f, ∇f)`` with ``f = s·(z_t − z_y)``, ``s`` the
        loss scale; ``t = goal``, or (untargeted) the class of the nearest linearised boundary."""
        x1 = x1.detach().requires_grad_(True)
        logits = self._logits(x1)
        true = logits.gather(1, y[:, None]).squeeze(1)
        if goal is not None:
            gap = (logits.gather(1, goal[:, None]).squeeze(1) - true) * self._scale
            (normal,) = torch.autograd.grad(gap.sum(), x1)
            return gap.detach(), normal
        num_classes = logits.shape[1]
        grads = torch.stack([
            torch.autograd.grad(logits[:, j].sum() * self._scale, x1, retain_graph=j < num_classes - 1)[0]
            for j in range(num_classes)], dim=1)
        rows = torch.arange(x1.shape[0], device=x1.device)
        gaps = (logits.detach() - true.detach()[:, None]) * self._scale
        normals = grads - grads[rows, y][:, None]
        dist = hyperplane_distance(gaps.flatten(), normals.flatten(0, 1), self.norm).view_as(gaps)
        nearest = dist.scatter(1, y[:, None], float("inf")).argmin(dim=1)
        return gaps[rows, nearest], normals[rows, nearest]

