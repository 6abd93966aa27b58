"""Argument validation shared by every robustlr module: each bad input is a ``ValueError`` that names
the argument, the value given and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["check_choice", "check_device", "check_fraction", "check_int", "check_number"]


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` listing the choices."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int, reason: str = "") -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum``; ``reason``, if given,
    is added to the error to explain the bound."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        because = f" ({reason})" if reason else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{because}; got {value!r}")
    return value


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number in ``[0, 1)``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value < 1
    ):
        raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)


def check_number(name: str, value: object, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number ``>= minimum`` (``> minimum`` if ``strict``)."""
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
        or (strict and value == minimum)
    ):
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def check_device(name: str, value: object) -> torch.device:
    """Return ``value`` as a :class:`torch.device` if it names one this machine has (CUDA only when available)."""
    try:
        device = torch.device(value)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a torch device such as cpu, cuda or cuda:1; got {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} must be one this machine has (cpu; CUDA is not available); got {value!r}")
    return device
