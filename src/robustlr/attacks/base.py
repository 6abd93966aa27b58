"""The attack base class: validation, eval-mode handling, precision, losses, restarts and seeded randomness.

Every attack maps a batch of images ``x ∈ [0,1]^{N×C×H×W}`` with labels ``y`` to adversarial images of the
same shape, dtype and device.  Subclasses implement :meth:`Attack._run`, one restart of the attack; the
base class validates inputs, switches the model to eval mode (restoring every submodule's own mode
afterwards, also on error: :func:`robustlr.modes.eval_mode`), runs the restarts and keeps, per sample, the
best one.

Precision (:mod:`robustlr.attacks.precision`): ``_run`` receives ``x`` in the working dtype (float32 for
float16/bfloat16 images) and computes in it with autocast off; the model is fed the iterates cast to the
input dtype, under the caller's autocast; :meth:`Attack._fit` returns the final images in the input dtype
with ``‖x_adv − x‖ ≤ ε`` held in that dtype (:func:`~robustlr.attacks.projections.fit_budget`).

Randomness never touches the global RNG (:mod:`robustlr.attacks.randomness`).  Each sample's random draws
are a counter-based hash of ``(seed, restart, purpose, key of the sample)``, computed on the device; the keys
hash each sample's values, once per call and only when the attack draws noise.  So an image gets the same
random start whatever batch it is in and wherever it sits in that batch: attacking a batch equals attacking
each image alone, and results do not depend on the evaluation batch size.

Host round trips: one per call, the fused input check (:meth:`Attack._check_inputs` reads one small tensor of
flags and extremes); the steps read nothing.

Loss scaling: with ``loss_scale = s`` the objective is multiplied by ``s`` before ``autograd.grad``, so the
gradients flowing back through a float16 model are ``s`` times larger and do not underflow (float16's
smallest subnormal is 6e-8).  Every step normalises its gradient per sample (``sign``, ``g/‖g‖``), which a
positive factor does not change, so in exact arithmetic the attack is the same.  ``loss_scale=None`` uses
:data:`AUTO_LOSS_SCALE` when the model runs in float16 (float16 images, or float16 autocast) and 1 otherwise.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_number, is_integer
from ..modes import eval_mode
from .early_stop import pending
from .precision import WORK_DTYPE, Precision, check_budget
from .projections import check_norm, fit_budget
from .randomness import Noise, sample_keys

__all__ = ["AUTO_LOSS_SCALE", "Attack", "DLR_CLASSES", "DLR_TINY", "LOSSES", "TARGETED_DLR_CLASSES", "dlr_loss",
           "targeted_dlr_loss"]

LOSSES = ("ce", "margin", "dlr")
"""Attack objectives: cross-entropy, the CW-style logit margin, or the difference of logits ratio
(:func:`dlr_loss`)."""

DLR_TINY = 1e-12
"""The guard of the DLR denominators (Croce & Hein's value): equal top logits give a finite loss."""
DLR_CLASSES = 3
"""Fewest classes of :func:`dlr_loss`: its denominator uses the 3 largest logits."""
TARGETED_DLR_CLASSES = 4
"""Fewest classes of :func:`targeted_dlr_loss`: its denominator uses the 4 largest logits."""


def _top_logits(logits: torch.Tensor, count: int, loss: str) -> torch.Tensor:
    """The ``count`` largest logits per sample, descending, shape ``(N, count)``; ``ValueError`` when the
    model has fewer classes (a shape check: nothing is read from the device)."""
    if logits.shape[1] < count:
        raise ValueError(f"loss {loss!r} needs logits of at least {count} classes (its denominator uses the "
                         f"{count} largest), the model has {logits.shape[1]}")
    return logits.topk(count, dim=1).values


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein, ICML 2020, arXiv 2003.01690, eq. 6), per sample, to maximise:

        DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e−12)

    with ``π`` sorting ``z`` in decreasing order.  Positive exactly when the model misclassifies; invariant to
    shifting and positively scaling the logits.  Needs at least 3 classes (``ValueError`` otherwise).
    """
    numerator, denominator = _dlr_terms(logits, y)
    return numerator / denominator


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted difference of logits ratio (Croce & Hein, ICML 2020, eq. 7), per sample, to maximise:

        DLR_t(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12)

    for true labels ``y`` and targets ``t``; it grows as the target logit overtakes the true one.  Needs at
    least 4 classes (``ValueError`` otherwise).
    """
    numerator, denominator = _targeted_dlr_terms(logits, y, target)
    return numerator / denominator


def _dlr_terms(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator ``max_{i≠y} z_i − z_y`` and denominator ``z_π1 − z_π3 + 1e−12`` of :func:`dlr_loss`."""
    top = _top_logits(logits, DLR_CLASSES, "dlr")
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return others - true, top[:, 0] - top[:, 2] + DLR_TINY


def _targeted_dlr_terms(logits: torch.Tensor, y: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator ``z_t − z_y`` and denominator ``z_π1 − (z_π3 + z_π4)/2 + 1e−12`` of
    :func:`targeted_dlr_loss`."""
    top = _top_logits(logits, TARGETED_DLR_CLASSES, "dlr (targeted)")
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    return aimed - true, top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + DLR_TINY


def _ratio_objective(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` whose gradient is ``D̄`` times that of the ratio, ``D̄`` the detached
    denominator (``> 0``).

    A ratio's gradient grows like ``1/D``: near-equal top logits (an untrained or a low-confidence model)
    make it large enough to overflow a float16 backward pass under the loss scale, and ``inf/inf`` gives a
    NaN step.  ``D̄·∇(n/D) = ∇n − (n/D)·∇D`` is of the size of the margin's gradient, and a positive
    per-sample factor leaves every normalised step (``sign``, ``g/‖g‖``) unchanged.
    """
    ratio = numerator / denominator
    scaled = ratio * denominator.detach()
    return scaled + (ratio - scaled).detach()


AUTO_LOSS_SCALE = 2.0**10
"""The loss scale of float16 models when none is given.  The objective is a per-sample *sum* (not a batch
mean as in training, where ``torch.amp.GradScaler`` starts at 2¹⁶ for means over batches of hundreds), so
2¹⁰ lifts per-pixel input gradients above float16's underflow while a Jacobian gain of up to ~60 between the
logits and the input stays below float16's largest value (65504)."""

_RANGE_TOL = 1e-6
_SEED_BOUND = 2**127
"""Seeds are integers in ``[-2**127, 2**127)``."""


class Attack(ABC):
    """Base class of robustlr attacks.

    Args:
        model: any ``nn.Module`` (or callable) mapping ``[0,1]`` images to ``(N, num_classes)`` logits;
            normalisation belongs inside the model (see ``robustlr.models.Normalize``).
        eps: the perturbation budget ``ε ≥ 0`` in the attack's norm, any real number (``float``,
            ``np.float32`` …) representable in float32 and, at call time, in the dtype of ``x``.
            ``ε = 0`` returns ``x`` unchanged.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy, default), ``"margin"`` (CW-style logit margin
            ``max_{j≠y} z_j − z_y``; targeted: ``z_t − max_{j≠t} z_j``) or ``"dlr"`` (:func:`dlr_loss`;
            targeted: :func:`targeted_dlr_loss` with the largest non-target logit in place of ``z_y``).
        restarts: number of independent runs; per sample the first restart that fools the model is kept,
            else the one with the highest loss.
        seed: seed of the attack's random draws, any integer number in ``[-2**127, 2**127)``; ``None``
            draws a fresh one (kept in ``self.seed``).
        loss_scale: factor ``s > 0`` applied to the objective before differentiation (see the module
            docstring); ``None``: :data:`AUTO_LOSS_SCALE` for float16 models, else 1.
    """

    name: str = "attack"
    early_stop: bool = False
    """Whether the attack drops the samples it has fooled as it goes (:mod:`robustlr.attacks.early_stop`; set by
    the attacks that offer it)."""

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        *,
        loss: str = "ce",
        restarts: int = 1,
        seed: int | None = None,
        loss_scale: float | None = None,
    ) -> None:
        if not callable(model):
            raise ValueError(f"model must be an nn.Module or a callable returning logits, got {type(model).__name__}")
        self.model = model
        self.norm = check_norm(norm)
        self.eps = check_budget("eps", check_number("eps", eps), WORK_DTYPE, "the attack computes in it", self.norm)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss
        self.restarts = check_int("restarts", restarts, 1)
        if seed is not None and not (is_integer(seed) and -_SEED_BOUND <= seed < _SEED_BOUND):  # type: ignore[operator]
            raise ValueError(f"seed must be an integer in [-2**127, 2**127) or None, got {seed!r}")
        self.seed = secrets.randbits(63) if seed is None else int(seed)  # type: ignore[arg-type]
        self.loss_scale = None if loss_scale is None else check_budget(
            "loss_scale", check_number("loss_scale", loss_scale, 0.0, strict=True), WORK_DTYPE,
            "the objective is scaled in it")
        self._key_source: torch.Tensor | None = None
        self._noise_source: Noise | None = None
        self._rows: torch.Tensor | None = None
        self._scale = 1.0
        self._max_label = 0
        self._precision: Precision | None = None

    # ------------------------------------------------------------------ public API
    def __call__(self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Return adversarial examples for ``(x, y)``; with ``targeted=True``, ``y`` holds target labels.

        The result has ``x``'s dtype and device, values in ``[0, 1]`` and ``‖x_adv − x‖ ≤ ε`` in that dtype.
        """
        if self.eps == 0:
            self._check_call(x, y)
            return x.detach().clone(memory_format=torch.preserve_format)
        return self._guarded(x, y, targeted, self._best_of_restarts)

    def _guarded(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, fn: Callable):
        """Check the call, then run ``fn(x_work, y, targeted)`` with the model in eval mode, per-sample random
        keys and the call's :class:`~robustlr.attacks.precision.Precision` set up.

        ``x_work`` is ``x`` in the working dtype; ``fn`` runs with autocast off (the model is called under the
        caller's autocast by :meth:`_logits`).  Every submodule's training flag is restored afterwards, also
        when ``fn`` raises.
        """
        self._max_label = self._check_call(x, y)
        precision = Precision.of(x)
        try:
            with eval_mode(self.model), precision.arithmetic(), torch.enable_grad():
                self._precision = precision
                self._scale = self.loss_scale if self.loss_scale is not None else \
                    AUTO_LOSS_SCALE if precision.half_model else 1.0
                x_work = x.detach().to(precision.work_dtype)
                self._key_source = x_work
                labels = y.detach().to(device=x.device, dtype=torch.long)
                return fn(x_work, labels, targeted)
        finally:
            self._key_source = None
            self._noise_source = None
            self._rows = None
            self._precision = None

    def _check_call(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Check ``x`` and ``y`` (:meth:`_check_inputs`) and that every budget of the attack
        (:meth:`_budgets`) is representable in ``x``'s dtype, before any work; returns the largest label."""
        max_label = self._check_inputs(x, y)
        for name, value in self._budgets().items():
            check_budget(name, value, x.dtype, "the dtype of x")
        return max_label

    def _budgets(self) -> dict[str, float]:
        """The attack's numbers that enter the perturbation arithmetic and must fit the images' dtype."""
        return {"eps": self.eps}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._describe().items())
        return f"{type(self).__name__}({fields})"

    def _describe(self) -> dict[str, object]:
        """Hyper-parameters shown by ``repr`` and recorded in reports."""
        described = {"eps": self.eps, "norm": self.norm, "loss": self.loss, "restarts": self.restarts, "seed": self.seed}
        return described if self.loss_scale is None else {**described, "loss_scale": self.loss_scale}

    @property
    def min_classes(self) -> int:
        """The fewest classes a model must have for an untargeted call: :data:`DLR_CLASSES` with the DLR loss,
        else 2 (a targeted call with the DLR loss needs :data:`TARGETED_DLR_CLASSES`)."""
        return DLR_CLASSES if self.loss == "dlr" else 2

    def check_fits(self, shape: tuple[int, ...], classes: int) -> None:
        """``ValueError`` unless the attack is defined on images of ``shape`` ``(N, C, H, W)`` and a model of
        ``classes`` classes (here: at least :attr:`min_classes`; subclasses add their own conditions).
        :func:`robustlr.evaluate.evaluate` asks every attack on its first batch, before any attack runs."""
        need = self.min_classes
        if classes < need:
            why = f"its loss's denominator uses the {need} largest logits" if need > 2 else "a class to move to"
            raise ValueError(f"needs a model of at least {need} classes ({why}), the model has {classes}: leave "
                             "it out; APGD-CE, FAB-T and Square need 2 (for the autoattack suite, give those attacks "
                             "yourself: attacks=... or robustlr evaluate --attack)")

    def state_bytes(self, shape: tuple[int, ...], element_size: int = 4) -> int:
        """Bytes of the optimisation state of one attack on a batch of ``shape`` (the perturbation)."""
        return math.prod(shape) * element_size

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _run(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, restart: int) -> torch.Tensor:
        """One restart of the attack; returns ``x_adv`` (detached)."""

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model output at ``x``, checked to be ``(N, num_classes)`` logits, in the working dtype.

        During a call the model is fed ``x`` cast to the input dtype, under the caller's autocast state;
        the gradient flows back through the cast, so it arrives in the working dtype.
        """
        precision = self._precision
        if precision is None:
            out = self.model(x)
        else:
            with precision.model_call():
                out = self.model(x.to(precision.input_dtype))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model must return logits of shape (N, num_classes) = ({x.shape[0]}, K), got {shape}"
            )
        if precision is not None and out.is_floating_point():
            out = out.to(torch.promote_types(out.dtype, precision.work_dtype))
        return out

    def _representable(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (working dtype) rounded to the nearest values of the call's input dtype: the image the model
        is fed, and one the attack can return as it is (no-op when the two dtypes agree)."""
        precision = self._precision
        if precision is None or precision.input_dtype == t.dtype:
            return t
        return t.to(precision.input_dtype).to(t.dtype)

    def _as_returned(self, point: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The image the attack returns for the iterate ``point`` of clean images ``x`` (:meth:`_fit`), in the
        working dtype, with the identity's gradient (straight through); ``point`` itself when the images are in
        the working dtype (the two then differ by an ulp of float32 at most)."""
        precision = self._precision
        if precision is None or precision.input_dtype == point.dtype:
            return point
        returned = self._fit(point.detach() - x, x).to(point.dtype)
        return returned + (point - point.detach())  # the value of returned exactly (+ 0), the gradient of point

    def _fit(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The final images ``clip_[0,1](x + δ)`` of a restart, in the input dtype, with ``‖x_adv − x‖ ≤ ε``
        held in that dtype (:func:`~robustlr.attacks.projections.fit_budget`); ``delta`` and ``x`` are in
        the working dtype."""
        dtype = x.dtype if self._precision is None else self._precision.input_dtype
        return fit_budget(delta.detach(), x, self.eps, self.norm, dtype)

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Per-sample loss to *maximise*, shape (N,).

        Targeted calls (``y`` holds targets ``t``) maximise ``−CE(z, t)``, the margin ``z_t − max_{j≠t} z_j``,
        or for ``"dlr"`` the targeted DLR whose "true" logit is the largest non-target one: a targeted call
        does not know the true label, and while the true class is the strongest non-target class (the case
        at the start of an attack on a correctly classified image) the two are the same logit.  Either way
        the margin and DLR objectives are positive exactly when the model predicts ``t``.
        """
        self._check_labels(logits.shape[1])
        if self.loss == "ce":
            ce = F.cross_entropy(logits, y, reduction="none")
            return -ce if targeted else ce
        if self.loss == "dlr":
            if not targeted:
                return self._dlr_objective(logits, y)
            strongest_other = logits.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
            return self._dlr_objective(logits, strongest_other, y)
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return true - others if targeted else others - true

    @staticmethod
    def _dlr_objective(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`dlr_loss` (``target`` None) or :func:`targeted_dlr_loss` as an attack objective: the same
        values, with the gradient of :func:`_ratio_objective` (the ratio's times its positive denominator)."""
        terms = _dlr_terms(logits, y) if target is None else _targeted_dlr_terms(logits, y, target)
        return _ratio_objective(*terms)

    def _check_labels(self, num_classes: int) -> None:
        """``ValueError`` unless the call's labels (largest: read once per call) index the model's logits."""
        if self._max_label >= num_classes:
            raise ValueError(f"y must hold labels in [0, {num_classes - 1}] (the model has {num_classes} logits), "
                             f"got max {self._max_label}")

    def _loss_and_grad(
        self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool, wrt: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample objective at ``x_adv`` and the gradient of its sum w.r.t. ``wrt`` (default ``[x_adv]``).

        The summed loss makes each sample's gradient independent of the rest of the batch.  The gradient is
        that of ``s · Σ objective`` with ``s`` the call's loss scale (see the module docstring): the steps
        normalise it per sample, so only its direction matters.
        """
        _, objective, grads = self._logits_loss_and_grad(x_adv, y, targeted, wrt)
        return objective, grads

    def _logits_loss_and_grad(
        self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool, wrt: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """:meth:`_loss_and_grad` that also returns the (detached) logits at ``x_adv``, first: for attacks that
        track which iterates fool the model without another forward pass."""
        wrt = [x_adv] if wrt is None else wrt
        logits = self._logits(x_adv)
        objective = self._objective(logits, y, targeted)
        total = objective.sum()
        grads = torch.autograd.grad(total * self._scale if self._scale != 1.0 else total, wrt)
        return logits.detach(), objective.detach(), list(grads)

    def _noise(self, kind: str, shape: tuple[int, ...], restart: int, like: torch.Tensor,
               purpose: str = "start") -> torch.Tensor:
        """Per-sample random tensor of shape ``(N, *shape)`` in ``like``'s dtype and device, a function of
        (seed, restart, purpose, sample) only (:class:`~robustlr.attacks.randomness.Noise`); in ``like``'s
        memory format when ``shape`` is that of its samples.

        ``kind``: ``"normal"`` (N(0,1)), ``"uniform"`` (U(−1,1)) or ``"unit"`` (U(0,1)).  The sample keys
        are computed on the first request of a call, so attacks that draw nothing never compute them.
        """
        if self._noise_source is None:
            if self._key_source is None:
                raise RuntimeError("Attack._noise is only available during an attack call")
            self._noise_source = Noise(sample_keys(self._key_source), self.seed)
        source = self._noise_source if self._rows is None else Noise(self._noise_source.keys[self._rows], self.seed)
        layout = torch.contiguous_format
        if like.dim() == 4 and tuple(shape) == tuple(like.shape[1:]) and \
                like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
            layout = torch.channels_last
        return source.draw(kind, tuple(shape), restart, purpose, layout).to(like.dtype)

    @contextmanager
    def _subset(self, rows: torch.Tensor) -> Iterator[None]:
        """Within the block the attack works on the call's samples ``rows`` (indices into the call's batch):
        :meth:`_noise` draws theirs, so a sample's draws stay those of the sample, whatever it is batched with."""
        outer = self._rows
        self._rows = rows if outer is None else outer[rows]
        try:
            yield
        finally:
            self._rows = outer

    # ------------------------------------------------------------------ internals
    def _best_of_restarts(self, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Per sample the first restart that fools the model, else the one of highest loss; with
        :attr:`early_stop` a restart runs only on the samples no earlier one fooled (one host read each)."""
        best = self._run(x, y, targeted, 0)
        if self.restarts == 1:
            return best
        best_fooled, best_loss = self._outcome(best, y, targeted)
        every = torch.arange(len(y), device=y.device)
        for restart in range(1, self.restarts):
            rows = pending(best_fooled) if self.early_stop else every
            if rows is None:
                break
            with self._subset(rows):
                cand = self._run(x[rows], y[rows], targeted, restart)
                fooled, loss = self._outcome(cand, y[rows], targeted)
            better = ~best_fooled[rows] & (fooled | (loss > best_loss[rows]))
            best[rows] = torch.where(better[:, None, None, None], cand, best[rows])
            best_fooled[rows] |= fooled
            best_loss[rows] = torch.where(better, loss, best_loss[rows])
        return best

    def _outcome(self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = self._logits(x_adv)
            return self._fooled(logits, y, targeted), self._objective(logits, y, targeted)

    @staticmethod
    def _fooled(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Per sample, whether ``logits`` meet the attack's goal: predict the target ``y`` (targeted) or
        anything but the label ``y``."""
        pred = logits.argmax(dim=1)
        return pred == y if targeted else pred != y

    @staticmethod
    def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> int:
        """Check the call's images and labels; return the largest label.

        The shape and dtype checks are free; the value checks (``x`` finite and in ``[0, 1]``, labels
        ``>= 0``) are fused into one tensor ``[all finite, min x, max x, min y, max y]`` read with a single
        host round trip.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor with values in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one image, got an empty batch")
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"y must be an integer tensor of labels, got {getattr(y, 'dtype', type(y).__name__)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        x_lo, x_hi = torch.aminmax(x.detach())
        y_lo, y_hi = torch.aminmax(y.detach().to(device=x.device))
        flags = torch.stack([t.to(torch.float64) for t in (torch.isfinite(x).all(), x_lo, x_hi, y_lo, y_hi)])
        finite, lo, hi, y_min, y_max = flags.tolist()
        if not finite:
            raise ValueError("x must be finite, got NaN or inf values")
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(f"x must have values in [0, 1] (normalise inside the model), got range [{lo:.4g}, {hi:.4g}]")
        if y_min < 0:
            raise ValueError(f"y must hold labels >= 0, got min {int(y_min)}")
        return int(y_max)
