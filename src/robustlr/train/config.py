"""``TrainConfig``: every setting of a training run, validated, with its JSON form and resume rules.

Defaults follow the CondLR paper's LeNet5 protocol (Savostianova et al., NeurIPS 2023; brief §5): SGD with
momentum 0.3, lr 0.1, MultiStepLR milestones [70, 100] with γ = 0.3, batch 128, 120 epochs, 25 % of the
training split held out for validation (seeded here), cross-entropy, no weight decay.

=================  ============  ====================================================================
key                default       meaning
=================  ============  ====================================================================
model              lenet5        :func:`robustlr.models.create` name
data               fashion-mnist :func:`robustlr.data.load_dataset` name
method             condlr        ``dense`` | ``lowrank`` | ``condlr`` | ``orthogonal`` (see METHODS)
rank               0.2 (*)       int ≥ 1, fraction of ``min(n, m)`` in (0, 1], or ``{module: rank}``
tau                0.1 (*)       CondLR bound κ(S) ≤ 1 + τ
grad_scale         reference (*) CondLR U/V gradient scale: ``reference`` | ``exact``
epochs             120
lr                 0.1
momentum           0.3
weight_decay       0.0
milestones         (70, 100)     MultiStepLR epochs
gamma              0.3           MultiStepLR factor
batch_size         128
seed               0             model init, validation split, data order, attacks
val_fraction       0.25          held-out fraction of the (subset of the) training split, in (0, 1)
train_subset       None          use only the first N training images (None: all)
augment            False         random crop (padding 4) + flip, as for CIFAR
eval_eps           0 .02 .05 .1  L∞ budgets of the final FGSM / PGD evaluation
eval_n             1000          test images of the final evaluation (0: all)
eval_steps         10            PGD steps of the final evaluation
eval_batch_size    256           batch size of validation and evaluation
adv, adv_*         None          adversarial training (see :mod:`robustlr.train.adv_config`)
select_by          None          best checkpoint by ``robust`` (default with adv) or ``clean`` val. accuracy
robust_val_n       1000          validation images attacked each epoch with the evaluation attack (0: all)
theta              None          CondLR rank adaptivity: relative truncation tolerance in [0, 1); needs
                                 ``grad_scale="exact"``
amp                None          autocast of the training forward passes: ``bf16`` | ``fp16`` (GradScaler)
device             cpu           (distributed runs: ``cuda`` means ``cuda:LOCAL_RANK`` in each process)
out                runs/train    run directory
data_root          None          the only directory looked in for the data files
download           False         download the data (checksum-verified) if missing
image_size         None          ``data="folder"`` only: images resized/cropped to N×N (random-resized crop +
                                 flip with ``augment``); None: every image must have one size
workers            None          processes decoding batches (None: min(4, CPUs) for a folder, 0 in memory)
=================  ============  ====================================================================

(*) ``rank`` applies to ``lowrank`` and ``condlr``; ``tau``, ``grad_scale`` and ``theta`` to ``condlr`` only
(:mod:`robustlr.train.method_options`). Given for another method they are refused; not given, they are
``None`` there (and so recorded) and take the default shown for the methods they apply to.
"""

from __future__ import annotations

import argparse
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from robustlr.checks import check_choice, check_int, check_number

from .adv_config import ADV_KEYS, resolve_adversarial
from .method_options import (
    CLI_NAMES,
    METHOD_KEYS,
    RankSpec,
    drop_inapplicable,
    parse_rank,
    resolve_method_options,
)

__all__ = ["AMP_MODES", "METHODS", "RESUME_MAY_DIFFER", "RankSpec", "TrainConfig", "config_differences", "parse_rank"]

METHODS: dict[str, str] = {
    "dense": "the dense model, plain SGD with momentum",
    "lowrank": "vanilla two-factor low-rank layers (to_lowrank(method='vanilla')), plain SGD with momentum",
    "condlr": "U S V^T layers (to_lowrank(method='condlr')) trained by CondLR: orthonormal U, V, kappa(S) <= 1 + tau",
    "orthogonal": "the dense model trained by QRProjectedSGD (orthonormal rows of every wide weight)",
}
"""Training methods: name -> description."""

AMP_MODES = ("bf16", "fp16")
"""Mixed-precision modes: autocast to bfloat16, or to float16 with a gradient scaler."""

RESUME_MAY_DIFFER: tuple[str, ...] = (
    "epochs", "out", "device", "data_root", "download", "workers", "eval_eps", "eval_n", "eval_steps", "eval_batch_size",
)
"""Keys that ``--resume`` accepts with a value other than the stored one: more (or as many) epochs, where the
run and the data live, and the final evaluation, which does not change the training. Any other difference
is refused."""

def _text(name: str, value: object, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string{' or None' if optional else ''}; got {value!r}")
    return value


def _sequence(name: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list; got {value!r}")
    return list(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see the module table); validated and normalised on construction.

    Every bad value raises ``ValueError`` naming the key, the value and what is allowed. Sequences are stored
    as tuples, so two configs compare equal exactly when :meth:`to_dict` gives the same JSON.
    """

    model: str = "lenet5"
    data: str = "fashion-mnist"
    method: str = "condlr"
    rank: RankSpec | None = None
    tau: float | None = None
    grad_scale: str | None = None
    epochs: int = 120
    lr: float = 0.1
    momentum: float = 0.3
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (70, 100)
    gamma: float = 0.3
    batch_size: int = 128
    seed: int = 0
    val_fraction: float = 0.25
    train_subset: int | None = None
    augment: bool = False
    eval_eps: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1)
    eval_n: int = 1000
    eval_steps: int = 10
    eval_batch_size: int = 256
    adv: str | None = None
    adv_norm: str | None = None
    adv_eps: float | None = None
    adv_steps: int | None = None
    adv_alpha: float | None = None
    adv_rank: int | float | None = None
    adv_fraction: float | None = None
    adv_bn: str | None = None
    adv_warm_start: bool = False
    select_by: str | None = None
    robust_val_n: int = 1000
    theta: float | None = None
    amp: str | None = None
    device: str = "cpu"
    out: str = "runs/train"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        values = {
            "model": _text("model", self.model),
            "data": _text("data", self.data),
            "method": check_choice("method", self.method, tuple(METHODS)),
            "epochs": check_int("epochs", self.epochs, 1),
            "lr": check_number("lr", self.lr, 0.0, strict=True),
            "momentum": check_number("momentum", self.momentum),
            "weight_decay": check_number("weight_decay", self.weight_decay),
            "milestones": self._milestones(),
            "gamma": check_number("gamma", self.gamma, 0.0, strict=True),
            "batch_size": check_int("batch_size", self.batch_size, 1),
            "seed": check_int("seed", self.seed, 0),
            "val_fraction": self._val_fraction(),
            "train_subset": None if self.train_subset is None else check_int("train_subset", self.train_subset, 2),
            "augment": self._flag("augment"),
            "eval_eps": tuple(
                check_number("eval_eps", eps) for eps in _sequence("eval_eps", self.eval_eps)
            ),
            "eval_n": check_int("eval_n", self.eval_n, 0),
            "eval_steps": check_int("eval_steps", self.eval_steps, 1),
            "eval_batch_size": check_int("eval_batch_size", self.eval_batch_size, 1),
            "robust_val_n": check_int("robust_val_n", self.robust_val_n, 0),
            "amp": None if self.amp is None else check_choice("amp", self.amp, AMP_MODES),
            "device": _text("device", self.device),
            "out": _text("out", str(self.out) if self.out is not None else None),
            "data_root": _text("data_root", None if self.data_root is None else str(self.data_root), optional=True),
            "download": self._flag("download"),
            "image_size": None if self.image_size is None else check_int("image_size", self.image_size, 1),
            "workers": None if self.workers is None else check_int("workers", self.workers, 0),
        }
        if values["image_size"] is not None and values["data"] != "folder":
            raise ValueError(f"image_size applies to data='folder' only (image folders are resized to it); got "
                             f"image_size={values['image_size']} with data={values['data']!r}")
        values.update(resolve_method_options(values["method"], {key: getattr(self, key) for key in METHOD_KEYS}))
        if not values["eval_eps"]:
            raise ValueError("eval_eps must list at least one budget (finite numbers >= 0); got []")
        adversarial = {key: getattr(self, key) for key in (*ADV_KEYS, "select_by")}
        values.update(resolve_adversarial(adversarial, augment=values["augment"]))
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def _milestones(self) -> tuple[int, ...]:
        milestones = tuple(check_int("milestones", m, 1) for m in _sequence("milestones", self.milestones))
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing epochs >= 1; got {list(milestones)}")
        return milestones

    def _val_fraction(self) -> float:
        value = self.val_fraction
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(
                f"val_fraction must be a number in (0, 1) (a validation set is needed to pick the best "
                f"checkpoint); got {value!r}"
            )
        return float(value)

    def _flag(self, name: str) -> bool:
        value = getattr(self, name)
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every setting (tuples become lists)."""
        return {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of :meth:`to_dict`'s output (e.g. a run's ``config.json``); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config recorded by a run (``config.json``, a checkpoint's sidecar, ``resume.pt``), also one
        written by an earlier version: keys recorded for a method they do not apply to (earlier versions
        recorded ``rank``, ``tau`` and ``grad_scale`` for every method) are dropped, as they had no effect
        (:func:`~robustlr.train.method_options.drop_inapplicable`). Anything else as :meth:`from_dict`."""
        if not isinstance(values, Mapping):
            raise ValueError(f"a stored training config must be a JSON object; got {values!r}")
        return cls.from_dict(drop_inapplicable(values))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of parsed ``robustlr train`` options (one attribute per key; missing ones keep defaults).

        ``--rank``, ``--tau``, ``--grad-scale`` and ``--theta`` given for a method they do not apply to are
        refused, naming the options. An option left out is ``None`` (resolved per method). Every error names
        the command-line option (``--adv-rank``, ``--train-subset``), not the Python field.
        """
        names = [f.name for f in fields(cls)]
        values = {name: getattr(args, name) for name in names if hasattr(args, name)}
        method = values.get("method", cls.method)
        if method in METHODS:
            resolve_method_options(method, {key: values.get(key) for key in METHOD_KEYS}, CLI_NAMES)
        adversarial = {key: values.get(key, getattr(cls, key)) for key in (*ADV_KEYS, "select_by")}
        resolve_adversarial(adversarial, bool(values.get("augment", False)), CLI_NAMES)
        try:
            return cls(**values)
        except ValueError as error:  # "train_subset must be ..." -> "--train-subset must be ..."
            key, _, rest = str(error).partition(" ")
            if key in names and rest:
                raise ValueError(f"{CLI_NAMES.key(key)} {rest}") from error
            raise


def config_differences(stored: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored value, given value)}`` for every key that differs and may not differ on resume."""
    old, new = stored.to_dict(), given.to_dict()
    return {key: (old[key], new[key]) for key in old if key not in RESUME_MAY_DIFFER and old[key] != new[key]}

