"""Settings of adversarial training: validation and the documented defaults of every ``adv_*`` key.

=================  =====================================================================================
key                meaning (``None`` resolves to the default shown when ``adv`` is given)
=================  =====================================================================================
adv                ``None`` (standard training) | ``pgd`` | ``fgsm`` | ``lora-pgd``
adv_norm           ``linf`` (default) | ``l2``
adv_eps            budget ε ≥ 0; default 0.1 (L∞) or 1.0 (L2)
adv_steps          ``pgd``/``lora-pgd``: 10; ``fgsm``: 1 (the only value allowed)
adv_alpha          ``pgd``: :func:`robustlr.attacks.default_alpha` (2.5ε/steps L∞, 1.8ε/steps L2);
                   ``fgsm``: 1.25ε (Wong et al. 2020); ``lora-pgd`` has no step size (must stay ``None``)
adv_rank           ``lora-pgd`` only: per-channel rank, int ≥ 1 or a fraction of min(H, W); default 0.1
adv_fraction       share F ∈ [0, 1] of each batch replaced by adversarial examples; default 1 (Madry)
adv_bn             ``eval`` (default: attack generated in eval mode) | ``train``
adv_warm_start     start each attack from the sample's perturbation of the previous epoch (not with augment)
select_by          ``robust`` (default with adv) | ``clean`` (default without adv)
=================  =====================================================================================

``fgsm`` is "fast" adversarial training (Wong, Rice & Kolter, ICLR 2020): one PGD step of size α = 1.25ε from a
uniform random start in the ε-ball. ``pgd`` is Madry et al. (ICLR 2018) with a random start; ``lora-pgd`` is the
low-rank attack of :class:`robustlr.attacks.LoRaPGD` (its ``lora`` init).
"""

from __future__ import annotations

import numbers
from typing import Any

from robustlr.attacks import default_alpha
from robustlr.attacks.projections import NORMS, check_rank_spec
from robustlr.checks import check_choice, check_int, check_number

from .method_options import PYTHON_NAMES, Naming

__all__ = ["ADV_ATTACKS", "ADV_BN_MODES", "ADV_KEYS", "DEFAULT_ADV_EPS", "DEFAULT_ADV_RANK", "DEFAULT_ADV_STEPS",
           "FAST_AT_ALPHA", "SELECTIONS", "resolve_adversarial"]

ADV_ATTACKS: dict[str, str] = {
    "pgd": "PGD with a random start (Madry et al. 2018)",
    "fgsm": "fast adversarial training: one step of 1.25 eps from a uniform random start (Wong et al. 2020)",
    "lora-pgd": "LoRa-PGD: rank-r perturbation factors per channel (Savostianova et al. 2024)",
}
"""Inner attacks of adversarial training: name -> description."""

ADV_BN_MODES = ("eval", "train")
"""Mode of the model while the attack is generated (the update always runs in train mode)."""

SELECTIONS = ("robust", "clean")
"""Model selection on the validation split: robust accuracy under the evaluation attack, or clean accuracy."""

ADV_KEYS = ("adv", "adv_norm", "adv_eps", "adv_steps", "adv_alpha", "adv_rank", "adv_fraction", "adv_bn",
            "adv_warm_start")
"""The keys that only apply when ``adv`` is given."""

DEFAULT_ADV_EPS = {"linf": 0.1, "l2": 1.0}
DEFAULT_ADV_STEPS = 10
DEFAULT_ADV_RANK = 0.1
FAST_AT_ALPHA = 1.25
"""Step of fast adversarial training in units of ε."""

_UNSET = {"adv_warm_start": False}


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (the share of each batch replaced by adversarial "
                         f"examples; 1 = Madry); got {value!r}")
    return float(value)


def _alpha(adv: str, alpha: object, eps: float, steps: int, norm: str, naming: Naming) -> float | None:
    if adv == "lora-pgd":
        if alpha is not None:
            raise ValueError(f"{naming.key('adv_alpha')} applies only to {naming.choices('adv', ('pgd', 'fgsm'))} "
                             f"(LoRa-PGD has no step size: it takes normalised steps on its factors); got "
                             f"{naming.setting('adv_alpha', alpha)} with {naming.setting('adv', 'lora-pgd')}")
        return None
    if alpha is None:
        return FAST_AT_ALPHA * eps if adv == "fgsm" else default_alpha(eps, steps, norm)
    return check_number(naming.key("adv_alpha"), alpha, 0.0, strict=True)


def resolve_adversarial(values: dict[str, Any], augment: bool, naming: Naming = PYTHON_NAMES) -> dict[str, Any]:
    """Validate the ``adv_*`` keys and ``select_by`` of ``values`` and fill in their defaults (module table).

    Without ``adv`` every ``adv_*`` key must be unset (``None``, or ``False`` for ``adv_warm_start``) and
    ``select_by`` resolves to ``"clean"``.

    Raises:
        ValueError: naming the key, the value and what is allowed, for an unknown attack, norm or mode, ε < 0,
            a fraction outside [0, 1], ``adv_rank`` without ``lora-pgd``, ``adv_alpha`` with ``lora-pgd``,
            ``adv_steps`` ≠ 1 with ``fgsm``, a key given without ``adv``, ``select_by='robust'`` without ``adv``,
            or ``adv_warm_start`` with ``augment``.  Keys are named as ``naming`` says (Python keywords, or the
            command line's options).
    """
    key_, set_ = naming.key, naming.setting
    adv = values["adv"]
    out = dict(values)
    if adv is None:
        for key in ADV_KEYS[1:]:
            if values[key] != _UNSET.get(key):
                raise ValueError(f"{key_(key)} applies only to adversarial training; got {set_(key, values[key])} "
                                 f"without {key_('adv')} (allowed: give {naming.choices('adv', tuple(ADV_ATTACKS))})")
        select_by = "clean" if values["select_by"] is None else check_choice(key_("select_by"),
                                                                            values["select_by"], SELECTIONS)
        if select_by == "robust":
            raise ValueError(f"{set_('select_by', 'robust')} needs {key_('adv')}: the evaluation attack takes its norm "
                             f"and budget from {key_('adv_norm')} and {key_('adv_eps')}; allowed without "
                             f"{key_('adv')}: {set_('select_by', 'clean')}")
        out["select_by"] = select_by
        return out
    check_choice(key_("adv"), adv, tuple(ADV_ATTACKS))
    norm = out["adv_norm"] = check_choice(key_("adv_norm"), "linf" if values["adv_norm"] is None else values["adv_norm"],
                                          NORMS)
    eps = DEFAULT_ADV_EPS[norm] if values["adv_eps"] is None else check_number(key_("adv_eps"), values["adv_eps"])
    out["adv_eps"] = eps
    steps = values["adv_steps"]
    if adv == "fgsm":
        if steps not in (None, 1) or isinstance(steps, bool):
            raise ValueError(f"{key_('adv_steps')} must be 1 (or omitted) for {set_('adv', 'fgsm')}, fast "
                             f"adversarial training takes a single step; got {steps!r}")
        steps = 1
    else:
        steps = DEFAULT_ADV_STEPS if steps is None else check_int(key_("adv_steps"), steps, 1)
    out["adv_steps"] = steps
    out["adv_alpha"] = _alpha(adv, values["adv_alpha"], eps, steps, norm, naming)
    if adv == "lora-pgd":
        out["adv_rank"] = check_rank_spec(DEFAULT_ADV_RANK if values["adv_rank"] is None else values["adv_rank"],
                                          key_("adv_rank"))
    elif values["adv_rank"] is not None:
        raise ValueError(f"{key_('adv_rank')} applies only to {set_('adv', 'lora-pgd')} (the rank of its perturbation "
                         f"factors); got {set_('adv_rank', values['adv_rank'])} with {set_('adv', adv)}")
    out["adv_fraction"] = 1.0 if values["adv_fraction"] is None else _fraction(values["adv_fraction"], key_("adv_fraction"))
    out["adv_bn"] = check_choice(key_("adv_bn"), "eval" if values["adv_bn"] is None else values["adv_bn"], ADV_BN_MODES)
    warm = values["adv_warm_start"]
    if not isinstance(warm, bool):
        raise ValueError(f"{key_('adv_warm_start')} must be True or False; got {warm!r}")
    if warm and augment:
        raise ValueError(f"{key_('adv_warm_start')} cannot be combined with {key_('augment')}: a stored perturbation "
                         "belongs to the crop and flip of the epoch that made it; allowed: one of the two")
    out["select_by"] = check_choice(key_("select_by"), "robust" if values["select_by"] is None else values["select_by"],
                                    SELECTIONS)
    return out
