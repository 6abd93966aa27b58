"""Argument validation shared by every robustlr module: each bad input is a ``ValueError`` that names
the argument, the value given and what is allowed.

Numbers are accepted by kind, not by Python type: any :class:`numbers.Real` (``float``, ``int``,
``np.float32`` …) is a real number and any :class:`numbers.Integral` (``int``, ``np.int64`` …) an integer;
``bool`` (and ``np.bool_``) is neither, so ``True`` is never silently read as 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = ["available_devices", "check_choice", "check_device", "check_flag", "check_fraction", "check_int", "check_number", "is_integer", "is_real"]


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer number (``int``, ``np.int64``, any :class:`numbers.Integral`), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (any :class:`numbers.Real`: ``float``, ``int``, ``np.float32`` …),
    not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` listing the choices."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int, reason: str = "") -> int:
    """Return ``value`` as an ``int`` if it is an integer (:func:`is_integer`) of at least ``minimum``;
    ``reason``, if given, is added to the error to explain the bound."""
    if not is_integer(value) or value < minimum:  # type: ignore[operator]
        because = f" ({reason})" if reason else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{because}; got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number in ``[0, 1)``."""
    if not is_real(value) or not math.isfinite(value) or not 0 <= value < 1:  # type: ignore[arg-type,operator]
        raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_number(name: str, value: object, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= minimum`` (``> minimum`` if ``strict``)."""
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    if (
        not is_real(value)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value < minimum  # type: ignore[operator]
        or (strict and value == minimum)
    ):
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_flag(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``ValueError`` naming ``name`` (no truthy stand-ins)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_device(name: str, value: object) -> torch.device:
    """Return ``value`` as a :class:`torch.device` if it names a device this machine has.

    ``cpu`` always; ``cuda`` / ``cuda:N`` when CUDA is available and ``N`` < the number of GPUs; ``mps`` when
    the MPS backend is available; other accelerator types when their ``torch.<type>.is_available()`` says so.
    ``meta`` holds no data and is refused.  This is the one check every place where a device enters uses
    (the CLI's ``--device``, ``evaluate(device=)``, ``load_trained(device=)``, the trainer and the demo).
    """
    if isinstance(value, torch.device):
        device = value
    else:
        try:
            device = torch.device(value)  # type: ignore[arg-type]
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"{name} must be a torch device such as cpu, cuda or cuda:1; got {value!r}") from None
    if not _available(device):
        raise ValueError(f"{name} must be one this machine has ({', '.join(available_devices())}); got {value!r}")
    return device


def available_devices() -> list[str]:
    """The devices of this machine, in words (``cpu``, ``cuda:0`` … ``cuda:K-1``, ``mps``)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        names.append("CUDA is not available")
    if _backend_available("mps"):
        names.append("mps")
    return names


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "meta":
        return False
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return device.index is None or device.index < torch.cuda.device_count()
    return _backend_available(device.type)


def _backend_available(kind: str) -> bool:
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
    else:
        backend = getattr(torch, kind, None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # a backend that cannot even answer is not available
        return False
