"""How attacks are handed to :func:`robustlr.evaluate.evaluate`.

Two kinds of attack specification are accepted, told apart by type, never by guessing:

* ``at_eps(factory)`` (an :class:`AttackSpec`): ``factory(eps)`` returns an attack for budget ``eps``; the
  attack is built and evaluated at every ε of ``eps_grid``.  Example: ``at_eps(lambda e: PGD(model, e, "l2"))``.
* any other callable ``atk(x, y) -> x_adv`` (a robustlr attack object, a torchattacks attack, a lambda):
  evaluated once, at its own budget ``getattr(atk, "eps", None)`` (``None`` when it has none).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["AttackFn", "AttackSpec", "at_eps", "AttackRun", "GRID", "FIXED", "check_eps_grid", "build_runs"]

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""An attack: ``atk(x, y) -> x_adv``."""

GRID = "grid"
"""Kind of a run built by an :class:`AttackSpec` at one ε of the grid."""
FIXED = "fixed"
"""Kind of a run of a ready attack, at its own ε."""


@dataclass(frozen=True)
class AttackSpec:
    """An attack factory ``eps -> atk`` to be evaluated at every ε of ``eps_grid`` (see :func:`at_eps`)."""

    factory: Callable[[float], AttackFn]

    def __post_init__(self) -> None:
        _check_signature(self.factory, 1, "factory", "a callable eps -> attack")


def at_eps(factory: Callable[[float], AttackFn]) -> AttackSpec:
    """Mark ``factory`` (``eps -> atk(x, y) -> x_adv``) as an attack to evaluate over the whole ε grid.

    >>> attacks = {"pgd-l2": at_eps(lambda e: PGD(model, e, "l2")), "fgsm": FGSM(model, 8 / 255)}
    """
    return AttackSpec(factory)


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget, as evaluated: ``name``, ``eps`` (``None`` if unknown), the attack, its kind."""

    name: str
    eps: float | None
    attack: AttackFn
    kind: str


def check_eps_grid(eps_grid: Iterable[float]) -> list[float]:
    """Return the grid as sorted, distinct floats; ``ValueError`` unless it is a non-empty 1-D set of finite ε ≥ 0."""
    if isinstance(eps_grid, torch.Tensor):
        eps_grid = eps_grid.detach().cpu()
    try:
        values = np.asarray(eps_grid, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eps_grid must be a sequence of finite numbers >= 0, got {eps_grid!r}") from err
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"eps_grid must be a non-empty 1-D sequence of finite numbers >= 0, got {eps_grid!r}")
    bad = [float(v) for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"eps_grid must hold finite numbers >= 0, got {bad[0]!r} in {values.tolist()}")
    return sorted(set(values.tolist()))


def build_runs(attacks: Mapping[str, AttackSpec | AttackFn], eps_grid: Iterable[float] | None) -> list[AttackRun]:
    """Expand the ``attacks`` mapping into runs: one per (AttackSpec, ε of the grid), one per ready attack.

    Raises ``ValueError`` for an empty or non-mapping ``attacks``, a non-string or empty name, a value that
    is not callable as described in the module docstring, ``eps_grid`` missing while an :class:`AttackSpec` is
    given, or ``eps_grid`` given while no attack is an :class:`AttackSpec` (a factory passed without
    ``at_eps`` would otherwise be called as an attack).
    """
    if not isinstance(attacks, Mapping) or not attacks:
        raise ValueError(f"attacks must be a non-empty mapping name -> at_eps(factory) or attack, got {attacks!r}")
    for name in attacks:
        if not isinstance(name, str) or not name:
            raise ValueError(f"attacks must have non-empty string names as keys, got {name!r}")
    has_grid = any(isinstance(spec, AttackSpec) for spec in attacks.values())
    if has_grid and eps_grid is None:
        raise ValueError("eps_grid must be given when some attacks are at_eps(...) factories, got None")
    if not has_grid and eps_grid is not None:
        raise ValueError(
            f"eps_grid was given ({eps_grid!r}) but no attack is an at_eps(...) factory: wrap eps -> attack "
            "factories with robustlr.evaluate.at_eps, or drop eps_grid for ready attacks"
        )
    grid = check_eps_grid(eps_grid) if has_grid else []
    runs = []
    for name, spec in attacks.items():
        if isinstance(spec, AttackSpec):
            for eps in grid:
                attack = spec.factory(eps)
                _check_signature(attack, 2, f"attacks[{name!r}] built at eps={eps}", _ATTACK)
                runs.append(AttackRun(name, eps, attack, GRID))
        else:
            _check_signature(spec, 2, f"attacks[{name!r}]", _ATTACK + _USE_AT_EPS)
            runs.append(AttackRun(name, _own_eps(spec), spec, FIXED))
    return runs


_ATTACK = "a callable atk(x, y) -> x_adv"
_USE_AT_EPS = " (wrap an eps -> attack factory with robustlr.evaluate.at_eps)"


def _check_signature(fn: object, n_args: int, what: str, allowed: str) -> None:
    """``ValueError`` naming ``what`` unless ``fn`` is callable with ``n_args`` positional arguments."""
    if not callable(fn):
        raise ValueError(f"{what} must be {allowed}, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and C callables expose no signature: nothing to check
        return
    try:
        signature.bind(*([None] * n_args))
    except TypeError as err:
        raise ValueError(f"{what} must be {allowed}, got a callable with signature {signature}") from err


def _own_eps(attack: AttackFn) -> float | None:
    """The budget a ready attack declares in ``attack.eps``, or ``None`` if it has no finite numeric one."""
    eps = getattr(attack, "eps", None)
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
