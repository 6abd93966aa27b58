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

Randomness never touches the global RNG.  Each sample's random draws come from its own
``torch.Generator`` seeded by ``(seed, restart, bytes of the sample)``, so an image gets the same random
start whatever batch it is in and wherever it sits in that batch: attacking a batch equals attacking
each image alone, and results do not depend on the evaluation batch size.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_number, is_integer
from ..modes import eval_mode
from .precision import WORK_DTYPE, Precision, check_budget
from .projections import check_norm, fit_budget

__all__ = ["Attack", "LOSSES"]

LOSSES = ("ce", "margin")
"""Attack objectives: cross-entropy, or the CW-style logit margin."""

_RANGE_TOL = 1e-6
_SEED_BOUND = 2**127
"""Seeds are mixed into the per-sample keys as 16-byte signed integers."""


class Attack(ABC):
    """Base class of robustlr attacks.

    Args:
        model: any ``nn.Module`` (or callable) mapping ``[0,1]`` images to ``(N, num_classes)`` logits;
            normalisation belongs inside the model (see ``robustlr.models.Normalize``).
        eps: the perturbation budget ``ε ≥ 0`` in the attack's norm, any real number (``float``,
            ``np.float32`` …) representable in float32 and, at call time, in the dtype of ``x``.
            ``ε = 0`` returns ``x`` unchanged.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy, default) or ``"margin"`` (CW-style logit margin
            ``max_{j≠y} z_j − z_y``; targeted: ``z_t − max_{j≠t} z_j``).
        restarts: number of independent runs; per sample the first restart that fools the model is kept,
            else the one with the highest loss.
        seed: seed of the attack's random draws, any integer number in ``[-2**127, 2**127)``; ``None``
            draws a fresh one (kept in ``self.seed``).
    """

    name: str = "attack"

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "linf",
        *,
        loss: str = "ce",
        restarts: int = 1,
        seed: int | None = None,
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
        self._sample_keys: list[bytes] = []
        self._max_label = 0
        self._precision: Precision | None = None

    # ------------------------------------------------------------------ public API
    def __call__(self, x: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
        """Return adversarial examples for ``(x, y)``; with ``targeted=True``, ``y`` holds target labels.

        The result has ``x``'s dtype and device, values in ``[0, 1]`` and ``‖x_adv − x‖ ≤ ε`` in that dtype.
        """
        if self.eps == 0:
            self._check_call(x, y)
            return x.detach().clone()
        return self._guarded(x, y, targeted, self._best_of_restarts)

    def _guarded(self, x: torch.Tensor, y: torch.Tensor, targeted: bool, fn: Callable):
        """Check the call, then run ``fn(x_work, y, targeted)`` with the model in eval mode, per-sample random
        keys and the call's :class:`~robustlr.attacks.precision.Precision` set up.

        ``x_work`` is ``x`` in the working dtype; ``fn`` runs with autocast off (the model is called under the
        caller's autocast by :meth:`_logits`).  Every submodule's training flag is restored afterwards, also
        when ``fn`` raises.
        """
        self._check_call(x, y)
        precision = Precision.of(x)
        try:
            with eval_mode(self.model), precision.arithmetic(), torch.enable_grad():
                self._precision = precision
                self._sample_keys = self._keys(x)
                self._max_label = int(y.max())  # read once per call: no device sync inside the attack steps
                labels = y.detach().to(device=x.device, dtype=torch.long)
                return fn(x.detach().to(precision.work_dtype), labels, targeted)
        finally:
            self._sample_keys = []
            self._precision = None

    def _check_call(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Check ``x`` and ``y`` (:meth:`_check_inputs`) and that every budget of the attack
        (:meth:`_budgets`) is representable in ``x``'s dtype, before any work."""
        self._check_inputs(x, y)
        for name, value in self._budgets().items():
            check_budget(name, value, x.dtype, "the dtype of x")

    def _budgets(self) -> dict[str, float]:
        """The attack's numbers that enter the perturbation arithmetic and must fit the images' dtype."""
        return {"eps": self.eps}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._describe().items())
        return f"{type(self).__name__}({fields})"

    def _describe(self) -> dict[str, object]:
        """Hyper-parameters shown by ``repr`` and recorded in reports."""
        return {"eps": self.eps, "norm": self.norm, "loss": self.loss, "restarts": self.restarts, "seed": self.seed}

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

    def _fit(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The final images ``clip_[0,1](x + δ)`` of a restart, in the input dtype, with ``‖x_adv − x‖ ≤ ε``
        held in that dtype (:func:`~robustlr.attacks.projections.fit_budget`); ``delta`` and ``x`` are in
        the working dtype."""
        dtype = x.dtype if self._precision is None else self._precision.input_dtype
        return fit_budget(delta.detach(), x, self.eps, self.norm, dtype)

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Per-sample loss to *maximise*, shape (N,)."""
        num_classes = logits.shape[1]
        if self._max_label >= num_classes:
            raise ValueError(f"y must hold labels in [0, {num_classes - 1}] (the model has {num_classes} logits), "
                             f"got max {self._max_label}")
        if self.loss == "ce":
            ce = F.cross_entropy(logits, y, reduction="none")
            return -ce if targeted else ce
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return true - others if targeted else others - true

    def _loss_and_grad(
        self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool, wrt: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample objective at ``x_adv`` and the gradient of its sum w.r.t. ``wrt`` (default ``[x_adv]``).

        The summed loss makes each sample's gradient independent of the rest of the batch.
        """
        wrt = [x_adv] if wrt is None else wrt
        objective = self._objective(self._logits(x_adv), y, targeted)
        grads = torch.autograd.grad(objective.sum(), wrt)
        return objective.detach(), list(grads)

    def _noise(self, kind: str, shape: tuple[int, ...], restart: int, like: torch.Tensor) -> torch.Tensor:
        """Per-sample random tensor of shape ``(N, *shape)``, reproducible from (seed, restart, sample).

        ``kind``: ``"normal"`` (N(0,1)), ``"uniform"`` (U(−1,1)) or ``"unit"`` (U(0,1)).
        """
        out = []
        for key in self._sample_keys:
            g = torch.Generator().manual_seed(_derive_seed(key, self.seed, restart, kind))
            if kind == "normal":
                out.append(torch.randn(shape, generator=g, dtype=torch.float64))
            elif kind == "uniform":
                out.append(torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1)
            else:
                out.append(torch.rand(shape, generator=g, dtype=torch.float64))
        return torch.stack(out).to(device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------ internals
    def _best_of_restarts(self, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        best = self._run(x, y, targeted, 0)
        if self.restarts == 1:
            return best
        best_fooled, best_loss = self._outcome(best, y, targeted)
        for restart in range(1, self.restarts):
            cand = self._run(x, y, targeted, restart)
            fooled, loss = self._outcome(cand, y, targeted)
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & ~best_fooled & (loss > best_loss))
            best = torch.where(better[:, None, None, None], cand, best)
            best_fooled = best_fooled | fooled
            best_loss = torch.where(better, loss, best_loss)
        return best

    def _outcome(self, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = self._logits(x_adv)
            pred = logits.argmax(dim=1)
            fooled = pred == y if targeted else pred != y
            return fooled, self._objective(logits, y, targeted)

    @staticmethod
    def _keys(x: torch.Tensor) -> list[bytes]:
        data = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return [hashlib.blake2b(sample.tobytes(), digest_size=16).digest() for sample in data]

    @staticmethod
    def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor with values in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one image, got an empty batch")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite, got NaN or inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(f"x must have values in [0, 1] (normalise inside the model), got range [{lo:.4g}, {hi:.4g}]")
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"y must be an integer tensor of labels, got {getattr(y, 'dtype', type(y).__name__)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        if int(y.min()) < 0:
            raise ValueError(f"y must hold labels >= 0, got min {int(y.min())}")


def _derive_seed(key: bytes, seed: int, restart: int, kind: str) -> int:
    h = hashlib.blake2b(key, digest_size=8, person=kind.encode()[:16].ljust(16, b"\0"))
    h.update(seed.to_bytes(16, "little", signed=True))
    h.update(restart.to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") >> 1
