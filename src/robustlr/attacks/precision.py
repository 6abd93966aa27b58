"""The numeric precision of an attack: which dtype its arithmetic runs in, and which dtype the model sees.

An attack's own state (the clean image ``x₀``, the perturbation ``δ``, the factors ``U, V``, the gradients
once they leave the model) lives in the *working dtype*, ``float32`` or wider: float16/bfloat16 cannot hold
the norm guards (``1e-12`` underflows to 0 in float16, so ``0/0`` gives NaN) nor a sign step that stays
inside the budget after rounding.  The model is fed the iterate cast back to the *input dtype*, under the
autocast state the caller set; the attack's own arithmetic runs with autocast off, so that a ``U @ V`` is
never silently computed in bfloat16.  :func:`~robustlr.attacks.projections.fit_budget` turns the final
working-dtype perturbation into images of the input dtype that hold the budget exactly.

Budgets (``eps``, ``alpha``) must be representable in both: :func:`check_budget` refuses a number larger
than :func:`largest_budget` of a dtype: its largest finite value (``1e39`` overflows float32, ``1e5``
float16), and for L2 half its square root, since the L2 norms square the perturbation (in float32 a
budget above ~9.2e18 would make every norm ``inf`` and every step 0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["WORK_DTYPE", "Precision", "check_budget", "largest_budget", "work_dtype"]

WORK_DTYPE = torch.float32
"""The narrowest dtype an attack computes in (the arithmetic of float16/bfloat16 inputs runs in it)."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the attack's arithmetic uses for inputs of ``dtype``: float32, or ``dtype`` if wider."""
    return torch.promote_types(dtype, WORK_DTYPE)


def largest_budget(dtype: torch.dtype, norm: str = "linf") -> float:
    """The largest budget whose arithmetic stays finite in ``dtype``: its largest finite value, or for
    ``norm="l2"`` half the square root of it (a sum of squares of entries up to ``ε + α`` must be finite)."""
    largest = float(torch.finfo(dtype).max)
    return math.sqrt(largest) / 2 if norm == "l2" else largest


def check_budget(name: str, value: float, dtype: torch.dtype, why: str, norm: str = "linf") -> float:
    """Return ``value`` if it is at most :func:`largest_budget` of ``dtype`` (and ``norm``), else raise
    ``ValueError`` naming ``name``, the value, the bound and ``why`` that dtype matters (e.g. "the dtype of
    x").

    ``value`` is already a finite float ``>= 0`` (see :func:`robustlr.checks.check_number`): a Python float
    is finite up to ~1.8e308, but ``1e39`` is ``inf`` in float32 and ``1e5`` is ``inf`` in float16.
    """
    largest = largest_budget(dtype, norm)
    if not abs(value) <= largest:
        kind = str(dtype).removeprefix("torch.")
        bound = f"half the square root of the largest finite {kind}, as L2 norms square it" if norm == "l2" \
            else f"the largest finite {kind}"
        raise ValueError(f"{name} must be at most {largest:.6g} ({bound}: {why}); got {value!r}")
    return value


@dataclass(frozen=True)
class Precision:
    """The dtypes and the autocast state of one attack call on images ``x`` (see the module docstring).

    Attributes:
        input_dtype: the dtype of ``x``: what the model is fed and what the attack returns.
        work_dtype: the dtype of the attack's arithmetic (:func:`work_dtype` of ``input_dtype``).
        device_type: ``x.device.type``, the device whose autocast state is read.
        autocast: whether the caller had autocast on for that device, and its dtype.
    """

    input_dtype: torch.dtype
    work_dtype: torch.dtype
    device_type: str
    autocast: tuple[bool, torch.dtype] | None

    @classmethod
    def of(cls, x: torch.Tensor) -> Precision:
        """The precision of a call on ``x``, reading the caller's autocast state for ``x``'s device."""
        kind = x.device.type
        autocast = None
        if torch.amp.is_autocast_available(kind):
            autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        return cls(x.dtype, work_dtype(x.dtype), kind, autocast)

    @property
    def half_model(self) -> bool:
        """Whether the model runs in float16: float16 images, or float16 autocast on (gradients flowing back
        through it can underflow, see :data:`robustlr.attacks.base.AUTO_LOSS_SCALE`)."""
        return self.input_dtype == torch.float16 or self.autocast == (True, torch.float16)

    @contextlib.contextmanager
    def arithmetic(self) -> Iterator[None]:
        """The attack's own arithmetic: autocast off, so that it runs in :attr:`work_dtype`."""
        if self.autocast is None:
            yield
            return
        with torch.autocast(self.device_type, enabled=False):
            yield

    @contextlib.contextmanager
    def model_call(self) -> Iterator[None]:
        """A call of the model: the caller's autocast state, as it was when the attack was called."""
        if self.autocast is None:
            yield
            return
        enabled, dtype = self.autocast
        with torch.autocast(self.device_type, dtype=dtype, enabled=enabled):
            yield
