"""The settings that belong to some training methods only: validation, per-method defaults, and refusal where
they do not apply (as the ``adv_*`` keys are refused without ``adv``).

==========  ===========================  ==============================  ===========================================
key         applies to                   default (``None``: not given)   meaning
==========  ===========================  ==============================  ===========================================
rank        ``lowrank``, ``condlr``      0.2                             rank of the factorised layers
tau         ``condlr``                   0.1                             κ(S) ≤ 1 + τ
grad_scale  ``condlr``                   ``reference``                   CondLR U/V gradient scale
theta       ``condlr``, with             ``None`` (fixed rank)           rank adaptivity (truncation tolerance)
            ``grad_scale="exact"``
==========  ===========================  ==============================  ===========================================

A key given for a method it does not apply to raises ``ValueError`` (nothing is silently ignored, and nothing
that was not used is recorded); a key not given resolves to its default for the methods it applies to and stays
``None`` for the others.  Runs recorded by versions that filled every key for every method are read with
:func:`drop_inapplicable` (the ignored values had no effect on those runs).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from robustlr.checks import check_choice
from robustlr.lowrank.adaptive import validate_theta
from robustlr.lowrank.manifold import validate_tau
from robustlr.lowrank.optim import GRAD_SCALES

__all__ = ["APPLIES_TO", "CLI_NAMES", "METHOD_KEYS", "METHOD_DEFAULTS", "PYTHON_NAMES", "Naming", "RankSpec",
           "drop_inapplicable", "parse_rank", "resolve_method_options"]

RankSpec = int | float | dict[str, int | float]

METHOD_KEYS = ("rank", "tau", "grad_scale", "theta")
"""The keys of this module, in the order they are checked."""

APPLIES_TO: dict[str, tuple[str, ...]] = {
    "rank": ("lowrank", "condlr"),
    "tau": ("condlr",),
    "grad_scale": ("condlr",),
    "theta": ("condlr",),
}
"""Key -> the methods that use it."""

METHOD_DEFAULTS: dict[str, Any] = {"rank": 0.2, "tau": 0.1, "grad_scale": "reference", "theta": None}
"""Key -> its value when not given, for the methods it applies to."""

_PURPOSE = {
    "rank": "the rank of the factorised layers",
    "tau": "the CondLR bound kappa(S) <= 1 + tau",
    "grad_scale": "the CondLR gradient scale of U and V",
    "theta": "CondLR rank adaptivity",
}

_RANK_ALLOWED = "an int >= 1, a fraction in (0, 1] of min(n, m), or a mapping {module name: such a rank}"


@dataclass(frozen=True)
class Naming:
    """How error messages name a setting: as a Python keyword (``rank=0.5``) or as a command-line option
    (``--rank 0.5``)."""

    key: Callable[[str], str]
    setting: Callable[[str, object], str]
    choices: Callable[[str, tuple[str, ...]], str]


def _cli_key(key: str) -> str:
    return "--" + key.replace("_", "-")


PYTHON_NAMES = Naming(
    key=lambda key: key,
    setting=lambda key, value: f"{key}={value!r}",
    choices=lambda key, values: f"{key}=" + " or ".join(repr(value) for value in values),
)
CLI_NAMES = Naming(
    key=_cli_key,
    setting=lambda key, value: f"{_cli_key(key)} {value}",
    choices=lambda key, values: f"{_cli_key(key)} " + " or ".join(values),
)


def _single_rank(value: object, name: str) -> int | float:
    """An int ≥ 1 or a float in (0, 1], given as a number (any :class:`numbers.Real`, not bool) or as text."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text.lstrip("+").isdigit() else float(text)
        except ValueError:
            raise ValueError(f"{name} must be {_RANK_ALLOWED}; got {text!r}") from None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"{name} must be {_RANK_ALLOWED}; got {value!r}")


def parse_rank(value: object) -> RankSpec:
    """Validate a rank specification: ``5``, ``0.2``, ``{"features.0": 4}``, or text ``"0.2"``, ``"5"``,
    ``"features.0=4,classifier.1=0.5"``.

    Whether an int fits a layer (``≤ min(n, m)``) and whether the names exist is checked when the model is
    converted (:func:`robustlr.lowrank.to_lowrank`).
    """
    if isinstance(value, str) and "=" in value:
        pairs = [part.partition("=") for part in value.replace(" ", ",").split(",") if part]
        if not all(equals for _, equals, _ in pairs):
            raise ValueError(f"rank must be {_RANK_ALLOWED} (as text: NAME=RANK pairs); got {value!r}")
        value = {key: spec for key, _, spec in pairs}
    if isinstance(value, Mapping):
        if not value or not all(isinstance(key, str) and key for key in value):
            raise ValueError(f"rank must be {_RANK_ALLOWED}; got {dict(value)!r}")
        return {key: _single_rank(spec, f"rank[{key!r}]") for key, spec in value.items()}
    return _single_rank(value, "rank")


def resolve_method_options(method: str, values: Mapping[str, Any], naming: Naming = PYTHON_NAMES) -> dict[str, Any]:
    """``{rank, tau, grad_scale, theta}`` for ``method``: each validated, or its default when ``None``
    (module table), or ``None`` for a method it does not apply to.

    Raises:
        ValueError: for a key given (not ``None``) with a method it does not apply to, ``theta`` without
            ``grad_scale="exact"``, or a bad value (naming the key as ``naming`` says, the value and what is
            allowed).
    """
    for key in METHOD_KEYS:
        if values.get(key) is not None and method not in APPLIES_TO[key]:
            raise ValueError(
                f"{naming.key(key)} ({_PURPOSE[key]}) applies only to {naming.choices('method', APPLIES_TO[key])}; "
                f"got {naming.setting(key, values[key])} with {naming.setting('method', method)}"
            )
    given = {key: METHOD_DEFAULTS[key] if values.get(key) is None else values[key] for key in METHOD_KEYS}
    out: dict[str, Any] = dict.fromkeys(METHOD_KEYS)
    if method in APPLIES_TO["rank"]:
        out["rank"] = parse_rank(given["rank"])
    if method == "condlr":
        out["tau"] = validate_tau(given["tau"])
        out["grad_scale"] = check_choice("grad_scale", given["grad_scale"], GRAD_SCALES)
        if given["theta"] is not None:
            out["theta"] = validate_theta(given["theta"])
            if out["grad_scale"] != "exact":
                raise ValueError(
                    f"{naming.key('theta')} (rank adaptivity) needs {naming.setting('grad_scale', 'exact')}, which "
                    f"lets the new directions enter the core at the scale of the gradient; got "
                    f"{naming.setting('theta', values['theta'])} with {naming.setting('grad_scale', out['grad_scale'])}"
                )
    return out


def drop_inapplicable(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config's keys with those recorded for a method they do not apply to set to ``None``.

    Earlier versions recorded ``rank``, ``tau`` and ``grad_scale`` (their defaults, or whatever was passed) for
    every method although only the methods of :data:`APPLIES_TO` used them; such values never affected the run,
    so dropping them reads the run exactly as it was trained.
    """
    method = values.get("method", "condlr")
    return {key: None if key in APPLIES_TO and method not in APPLIES_TO[key] else value
            for key, value in values.items()}
