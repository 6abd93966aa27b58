"""The settings of a compression run, validated, with their JSON form, the resume rule and the fine-tuning run
they define.

=================  ==================  ===============================================================================
setting            default             meaning
=================  ==================  ===============================================================================
rank               —                   ``robustlr train``'s rank (int, fraction, ``{layer: rank}``, ``"0.2"``,
                                       ``"a=3,b=0.5"``) or ``"energy:E"``; exactly one of ``rank`` and ``params``
params             —                   parameter budget, a fraction in (0, 1] (:mod:`robustlr.lowrank.rank_choice`)
keep_last_full     True                the classifier stays at full rank, i.e. dense (unless ``force``)
force              False               factorise also layers whose factorisation stores more than the dense layer
epochs             5                   CondLR fine-tuning epochs
tau                0.1                 κ(S) ≤ 1 + τ
lr                 0.005               fine-tuning learning rate (constant: no milestones)
adv                None                adversarial fine-tuning attack, as ``robustlr train --adv``
attacks            ``("pgd-linf",)``   attacks of the before/after evaluation (:func:`robustlr.attacks.build_attack`)
eps                per data (below)    budgets of the evaluation, 0 (clean) included
eval_n             1000                test images evaluated (0: all)
eval_steps         None                attack steps (None: each attack's default, 10 for PGD)
attack_rank        None                rank of the low-rank attacks (``lora-pgd`` …), required for them
eval_batch_size    256                 evaluation batch size
latency_batch      128                 images per forward pass of the latency measurement
latency_repeats    20                  timed forward passes of each model (median)
seed               0                   fine-tuning (data order, attacks) and evaluation attacks
device             cpu                 where everything runs
train_options      {}                  other :class:`~robustlr.train.TrainConfig` keys of the fine-tuning
=================  ==================  ===============================================================================

The fine-tuning is a :func:`robustlr.train.train` run (``method="condlr"``, ``rank`` the chosen per-layer ranks)
whose defaults differ from training from scratch where fine-tuning a trained network asks for it:
:data:`FINETUNE_DEFAULTS` (momentum 0.9, the exact Riemannian gradient scale, a constant rate), each of them a
``train_options`` key. The keys compress sets itself (:data:`OWN_TRAIN_KEYS`) and ``theta`` (rank adaptivity
would change the chosen ranks) are refused there.

Default ε grid: L∞ attacks ``{0, 0.05}`` on one-channel images (MNIST-like: the CondLR paper's budgets are
0.02 to 0.1) and ``{0, 2/255}`` on colour ones; L2 attacks ``{0, 0.5}``; attacks of both norms need ``eps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from robustlr.attacks import ATTACK_NAMES, RANKED_ATTACKS, attack_norm
from robustlr.attacks.projections import check_rank_spec
from robustlr.checks import check_choice, check_device, check_int, check_number, is_real
from robustlr.train import TrainConfig
from robustlr.train.config import RankSpec, parse_rank

__all__ = ["ENERGY_PREFIX", "FINETUNE_DEFAULTS", "OWN_TRAIN_KEYS", "RESUME_MAY_DIFFER", "CompressSettings",
           "RankRequest", "default_eps", "parse_rank_request"]

ENERGY_PREFIX = "energy:"

RankRequest = RankSpec | str
"""A rank as ``robustlr train`` takes it, or ``"energy:E"``."""

FINETUNE_DEFAULTS: dict[str, Any] = {"momentum": 0.9, "grad_scale": "exact", "milestones": ()}
"""TrainConfig keys whose fine-tuning default differs from training's (each may be given in ``train_options``)."""

OWN_TRAIN_KEYS = ("model", "data", "method", "rank", "tau", "theta", "epochs", "lr", "adv", "seed", "device", "out",
                  "eval_eps", "eval_n", "eval_steps", "eval_batch_size", "data_root", "download")
"""TrainConfig keys compress sets itself (``theta`` is refused: rank adaptivity would change the chosen ranks)."""

RESUME_MAY_DIFFER = ("epochs", "device")
"""Settings a resumed compression may change: more (or as many) epochs, and where it runs."""

_LINF_GRAY, _LINF_COLOUR, _L2 = 0.05, 2 / 255, 0.5


def parse_rank_request(value: object) -> tuple[RankSpec | None, float | None]:
    """``(rank, energy)``: a training rank (int, fraction, ``{layer: rank}`` or its text) and ``None``, or
    ``None`` and the fraction of ``"energy:E"``.

    Raises:
        ValueError: naming ``rank``, for anything else or an energy outside (0, 1].
    """
    if isinstance(value, str) and value.strip().startswith(ENERGY_PREFIX):
        text = value.strip()[len(ENERGY_PREFIX):]
        try:
            energy = float(text)
        except ValueError:
            energy = math.nan
        if not 0 < energy <= 1:
            raise ValueError(f"rank must be 'energy:E' with E a fraction in (0, 1] of each layer's sum of squared "
                             f"singular values (e.g. 'energy:0.9'), or a rank as robustlr train takes it; got "
                             f"{value!r}")
        return None, energy
    try:
        return parse_rank(value), None
    except ValueError as error:
        raise ValueError(f"{error}; or 'energy:E' with E in (0, 1]") from None


def default_eps(attacks: Sequence[str], channels: int) -> tuple[float, ...]:
    """The default budgets (module docstring) of ``attacks`` on images of ``channels`` channels.

    Raises:
        ValueError: for attacks of both norms (no grid fits both: give ``eps``).
    """
    norms = sorted({attack_norm(name) for name in attacks})
    if len(norms) > 1:
        raise ValueError(f"eps must be given for attacks of both norms (L-inf and L2 budgets differ); got attacks "
                         f"{list(attacks)}")
    if norms == ["l2"]:
        return (0.0, _L2)
    return (0.0, _LINF_GRAY if channels == 1 else _LINF_COLOUR)


@dataclass(frozen=True)
class CompressSettings:
    """Everything that defines a compression (module table); validated on construction, every error naming
    the setting, its value and what is allowed. ``eps=None`` takes :func:`default_eps` once the data is known
    (:meth:`with_data`)."""

    rank: RankRequest | None = None
    params: float | None = None
    keep_last_full: bool = True
    force: bool = False
    epochs: int = 5
    tau: float = 0.1
    lr: float = 0.005
    adv: str | None = None
    attacks: tuple[str, ...] = ("pgd-linf",)
    eps: tuple[float, ...] | None = None
    eval_n: int = 1000
    eval_steps: int | None = None
    attack_rank: int | float | None = None
    eval_batch_size: int = 256
    latency_batch: int = 128
    latency_repeats: int = 20
    seed: int = 0
    device: str = "cpu"
    train_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.params is None):
            raise ValueError("give exactly one of rank (as robustlr train takes it, or 'energy:E') and params (a "
                             f"fraction in (0, 1] of the dense weights); got rank={self.rank!r}, "
                             f"params={self.params!r}")
        if self.rank is not None:
            parse_rank_request(self.rank)
        elif not is_real(self.params) or not 0 < self.params <= 1:  # type: ignore[operator]
            raise ValueError(f"params must be a fraction in (0, 1] of the dense weights of the Linear/Conv2d layers; "
                             f"got {self.params!r}")
        for name in ("keep_last_full", "force"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        attacks = tuple(check_choice("attacks", name, ATTACK_NAMES) for name in _sequence("attacks", self.attacks))
        if not attacks:
            raise ValueError(f"attacks must name at least one attack of {ATTACK_NAMES}; got []")
        ranked = [name for name in attacks if name in RANKED_ATTACKS]
        if ranked and self.attack_rank is None:
            raise ValueError(f"attack_rank must be given for the low-rank attacks {ranked} (an int >= 1 or a fraction "
                             "in (0, 1] of min(H, W)); got None")
        if self.attack_rank is not None and not ranked:
            raise ValueError(f"attack_rank applies only to the low-rank attacks {RANKED_ATTACKS}; got "
                             f"attack_rank={self.attack_rank!r} with attacks {list(attacks)}")
        values: dict[str, Any] = {
            "attack_rank": None if self.attack_rank is None else check_rank_spec(self.attack_rank, "attack_rank"),
            "epochs": check_int("epochs", self.epochs, 1),
            "eval_n": check_int("eval_n", self.eval_n, 0, "0 = all"),
            "eval_steps": None if self.eval_steps is None else check_int("eval_steps", self.eval_steps, 1),
            "eval_batch_size": check_int("eval_batch_size", self.eval_batch_size, 1),
            "latency_batch": check_int("latency_batch", self.latency_batch, 1),
            "latency_repeats": check_int("latency_repeats", self.latency_repeats, 1),
            "attacks": attacks,
            "eps": None if self.eps is None else self._eps(),
            "params": None if self.params is None else float(self.params),
            "train_options": self._train_options(),
        }
        check_device("device", self.device)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self.finetune_config({}, "check")  # the fine-tuning settings are TrainConfig's to check

    def _eps(self) -> tuple[float, ...]:
        grid = sorted({check_number("eps", eps) for eps in _sequence("eps", self.eps)} | {0.0})
        return tuple(grid)

    def _train_options(self) -> dict[str, Any]:
        if not isinstance(self.train_options, Mapping):
            raise ValueError(f"train_options must be a mapping of TrainConfig keys; got {self.train_options!r}")
        own = sorted(set(self.train_options) & set(OWN_TRAIN_KEYS))
        if own:
            raise ValueError(f"train_options may not set {own}: compress sets them itself (theta is refused: rank "
                             f"adaptivity would change the chosen ranks); allowed: the other TrainConfig keys")
        return dict(self.train_options)

    def with_data(self, channels: int) -> CompressSettings:
        """These settings with the default ε grid filled in for images of ``channels`` channels."""
        if self.eps is not None:
            return self
        values = {key: getattr(self, key) for key in self.__dataclass_fields__}
        return CompressSettings(**{**values, "eps": default_eps(self.attacks, channels)})

    def finetune_config(self, ranks: Mapping[str, int], out: str, model: str = "model",
                        data: str = "data") -> TrainConfig:
        """The :class:`~robustlr.train.TrainConfig` of the fine-tuning: CondLR at ``ranks`` into ``out``. The
        trainer's own final evaluation is kept to a clean pass (compress evaluates both models itself), and its
        robust validation (with ``adv``) uses ``eval_steps`` PGD steps (10 by default)."""
        options = {**FINETUNE_DEFAULTS, **self.train_options}
        return TrainConfig.from_dict({
            **options, "model": model, "data": data, "method": "condlr", "rank": dict(ranks) or None,
            "tau": self.tau, "epochs": self.epochs, "lr": self.lr, "adv": self.adv, "seed": self.seed,
            "device": self.device, "out": out, "eval_eps": [0.0], "eval_n": self.eval_n,
            "eval_steps": self.eval_steps or 10, "eval_batch_size": self.eval_batch_size,
        })

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON gives them back (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def differences(self, stored: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (stored, given)}`` of the settings that differ from ``stored`` (:meth:`to_dict` of an earlier
        run) and may not differ on resume."""
        given = self.to_dict()
        keys = sorted(set(given) | set(stored))
        return {key: (stored.get(key), given.get(key)) for key in keys
                if key not in RESUME_MAY_DIFFER and stored.get(key) != given.get(key)}


def _sequence(name: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list; got {value!r}")
    return list(value)  # type: ignore[call-overload]
