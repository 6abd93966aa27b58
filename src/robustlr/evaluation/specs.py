"""How attacks are handed to :func:`robustlr.evaluate.evaluate`.

Two kinds of attack specification are accepted, told apart by type, never by guessing:

* ``at_eps(factory)`` (an :class:`AttackSpec`): ``factory(eps)`` returns an attack for budget ``eps``; the
  attack is built and evaluated at every ε of ``eps_grid``.  Example: ``at_eps(lambda e: PGD(model, e, "l2"))``.
* any other callable ``atk(x, y) -> x_adv`` (a robustlr attack object, a torchattacks attack, a lambda):
  evaluated once, at its own budget ``getattr(atk, "eps", None)`` (``None`` when it has none).

An attack declares its threat model in ``atk.norm`` (``"linf"`` or ``"l2"``, as every robustlr attack does);
an attack without one is of unknown norm.  A factory must build its attack at the budget it is given: an attack
that declares ``atk.eps`` different from the grid's ε is refused.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..attacks.projections import NORMS
from ..checks import is_real

__all__ = [
    "AttackFn", "AttackSpec", "at_eps", "AttackRun", "GRID", "FIXED", "check_eps_grid", "build_runs",
    "declared_norm", "own_eps",
]

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
    """One attack at one budget, as evaluated: ``name``, ``eps`` (``None`` if unknown), the attack, its kind and
    the norm it declares (``None`` if unknown, see :func:`declared_norm`)."""

    name: str
    eps: float | None
    attack: AttackFn
    kind: str
    norm: str | None = None


def declared_norm(attack: object) -> str | None:
    """The threat model ``attack.norm`` declares (one of ``"linf"``, ``"l2"``), or ``None`` if it declares none."""
    norm = getattr(attack, "norm", None)
    return norm if isinstance(norm, str) and norm in NORMS else None


def check_eps_grid(eps_grid: Iterable[float]) -> list[float]:
    """Return the grid as sorted, distinct floats; ``ValueError`` unless it is a non-empty 1-D sequence of finite
    real numbers ε ≥ 0 (any :class:`numbers.Real`: ``float``, ``int``, ``np.float32``; never a ``bool``).

    A single-precision ε (``np.float32(0.1)``, a float32 tensor or array) is read as the decimal it prints as
    (0.1, not 0.10000000149), so that it names the same budget as the float ``0.1`` everywhere.
    """
    if isinstance(eps_grid, torch.Tensor):
        eps_grid = eps_grid.detach().cpu().numpy()
    if isinstance(eps_grid, np.ndarray):
        eps_grid = list(eps_grid) if eps_grid.ndim == 1 else eps_grid
    if isinstance(eps_grid, (str, bytes)) or not isinstance(eps_grid, Iterable) or isinstance(eps_grid, np.ndarray):
        raise ValueError(f"eps_grid must be a non-empty 1-D sequence of finite numbers >= 0, got {eps_grid!r}")
    values = list(eps_grid)
    if not values:
        raise ValueError(f"eps_grid must be a non-empty 1-D sequence of finite numbers >= 0, got {eps_grid!r}")
    for value in values:
        if not is_real(value) or not math.isfinite(value) or value < 0:  # type: ignore[arg-type,operator]
            raise ValueError(f"eps_grid must hold finite numbers >= 0, got {value!r} in {values!r}")
    return sorted({_decimal(value) for value in values})


def _decimal(value: float) -> float:
    """``value`` as a Python float; a lower-precision numpy float as the shortest decimal that prints it."""
    if isinstance(value, np.floating) and np.finfo(value.dtype).bits < 64:
        return float(np.format_float_positional(value, unique=True, trim="-"))
    return float(value)


def build_runs(attacks: Mapping[str, AttackSpec | AttackFn], eps_grid: Iterable[float] | None) -> list[AttackRun]:
    """Expand the ``attacks`` mapping into runs: one per (AttackSpec, ε of the grid), one per ready attack.

    Raises ``ValueError`` for an empty or non-mapping ``attacks``, a non-string or empty name, a value that
    is not callable as described in the module docstring, ``eps_grid`` missing while an :class:`AttackSpec` is
    given, ``eps_grid`` given while no attack is an :class:`AttackSpec` (a factory passed without
    ``at_eps`` would otherwise be called as an attack), or a factory whose attack declares another budget
    ``atk.eps`` than the ε it was built at (a factory that ignores its argument).
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
                _check_built_eps(attack, eps, name)
                runs.append(AttackRun(name, eps, attack, GRID, declared_norm(attack)))
        else:
            _check_signature(spec, 2, f"attacks[{name!r}]", _ATTACK + _USE_AT_EPS)
            runs.append(AttackRun(name, own_eps(spec), spec, FIXED, declared_norm(spec)))
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


def _check_built_eps(attack: AttackFn, eps: float, name: str) -> None:
    """``ValueError`` if the attack a factory built at ``eps`` declares another budget in ``attack.eps``."""
    own = own_eps(attack)
    if own is not None and not math.isclose(own, eps, rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(
            f"attacks[{name!r}] factory built an attack with eps={own:g} at eps={eps:g}: the factory must use its "
            "argument (at_eps(lambda e: PGD(model, e, ...)))"
        )


def own_eps(attack: AttackFn) -> float | None:
    """The budget a ready attack declares in ``attack.eps``, or ``None`` if it has no finite numeric one."""
    eps = getattr(attack, "eps", None)
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
