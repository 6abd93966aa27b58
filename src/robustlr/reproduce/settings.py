"""Validation of an experiment kind's settings table (e.g. ``[attack]``): every key known, every value checked.

A schema maps each allowed key to ``(default, check)``; ``check(name, value)`` returns the normalised value or
raises ``ValueError`` naming the key, the value and what is allowed (the :mod:`robustlr.checks` convention).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..attacks.projections import check_rank_spec
from ..checks import check_choice, check_int, check_number

__all__ = ["Check", "Schema", "check_settings", "choice", "choices", "eps_list", "positive_int", "positive_number",
           "rank_list", "seed"]

Check = Callable[[str, Any], Any]
Schema = Mapping[str, tuple[Any, Check]]


def check_settings(where: str, table: object, schema: Schema) -> dict[str, Any]:
    """``table`` with every key checked and the missing ones set to their defaults.

    Raises ``ValueError`` for a table that is not a mapping or holds a key the schema does not know.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a table of settings {sorted(schema)}; got {table!r}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(schema)}")
    return {key: check(f"{where}.{key}", table.get(key, default)) for key, (default, check) in schema.items()}


def _non_empty_list(name: str, value: object, what: str) -> list[Any]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty list of {what}; got {value!r}")
    if len(set(map(repr, value))) != len(value):
        raise ValueError(f"{name} must list distinct values of {what}; got {list(value)!r}")
    return list(value)


def eps_list(name: str, value: object) -> list[float]:
    """A non-empty list of distinct finite budgets ε > 0, sorted."""
    return sorted(check_number(name, eps, 0.0, strict=True) for eps in _non_empty_list(name, value, "budgets > 0"))


def rank_list(name: str, value: object) -> list[int | float]:
    """A non-empty list of distinct ranks: ints ≥ 1 or fractions in (0, 1] of the image side."""
    values = _non_empty_list(name, value, "ranks (ints >= 1 or fractions in (0, 1])")
    return [check_rank_spec(rank, name) for rank in values]


def positive_int(name: str, value: object) -> int:
    """An int ≥ 1."""
    return check_int(name, value, 1)


def positive_number(name: str, value: object) -> float:
    """A finite number > 0."""
    return check_number(name, value, 0.0, strict=True)


def seed(name: str, value: object) -> int:
    """An int ≥ 0."""
    return check_int(name, value, 0)


def choice(allowed: Sequence[str]) -> Check:
    """A check accepting one of ``allowed``."""
    return lambda name, value: check_choice(name, value, tuple(allowed))


def choices(allowed: Sequence[str]) -> Check:
    """A check accepting a non-empty list of distinct values of ``allowed``."""
    def check(name: str, value: object) -> list[str]:
        values = _non_empty_list(name, value, f"values of {list(allowed)}")
        return [check_choice(name, v, tuple(allowed)) for v in values]

    return check
