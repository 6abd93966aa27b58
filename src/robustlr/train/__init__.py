"""Training: dense, vanilla low-rank, CondLR and orthogonal-dense networks, adversarially or not, in one process
or distributed (DDP), with exact resume.

>>> from robustlr.train import TrainConfig, train
>>> result = train(TrainConfig(method="condlr", rank=0.2, tau=0.1, epochs=2, out="runs/x"))  # doctest: +SKIP
>>> result.history[-1]["val_accuracy"], result.evaluation["best"].clean_accuracy                  # doctest: +SKIP
>>> robust = train(TrainConfig(method="condlr", adv="pgd", adv_eps=0.1, out="runs/adv"))      # doctest: +SKIP
>>> robust.summary["evaluation"]["best"]["eval_attack_robust_accuracy"]                         # doctest: +SKIP

Modules: :mod:`~robustlr.train.config` (settings and resume rules; :mod:`~robustlr.train.adv_config` for the
adversarial ones), :mod:`~robustlr.train.methods` (model, optimiser and schedule of each method),
:mod:`~robustlr.train.step` (one step, with the ``batch_transform`` hook), :mod:`~robustlr.train.batches` (the
epoch's batches with sample ids, sharded), :mod:`~robustlr.train.adversarial` and
:mod:`~robustlr.train.warm_start` (adversarial training), :mod:`~robustlr.train.validation` (clean and robust
validation, model selection), :mod:`~robustlr.train.distributed`, :mod:`~robustlr.train.replicas` and
:mod:`~robustlr.train.launch` (DDP), :mod:`~robustlr.train.precision` (AMP), :mod:`~robustlr.train.metrics_log`,
:mod:`~robustlr.train.checkpointing`, :mod:`~robustlr.train.signals`, :mod:`~robustlr.train.final_eval`, :mod:`~robustlr.train.summary` and
:mod:`~robustlr.train.sharded_eval`, :mod:`~robustlr.train.trainer` (:func:`train`), :mod:`~robustlr.train.reuse` (train, resume or reuse a run), and
:mod:`~robustlr.train.quick` (a minimal loop for demos).
"""

from .adv_config import ADV_ATTACKS
from .adversarial import AdversarialTraining, TrainModeView
from .checkpointing import RunPaths, load_trained
from .config import AMP_MODES, METHODS, RESUME_MAY_DIFFER, TrainConfig
from .launch import launch
from .replicas import ReplicaDivergenceError
from .signals import TrainingInterrupted
from .step import BatchContext, BatchTransform, NonFiniteLossError, identity, train_step
from .reuse import ensure_trained, train_seconds
from .trainer import TrainResult, train

__all__ = [
    "ADV_ATTACKS",
    "AMP_MODES",
    "METHODS",
    "RESUME_MAY_DIFFER",
    "AdversarialTraining",
    "BatchContext",
    "BatchTransform",
    "NonFiniteLossError",
    "ReplicaDivergenceError",
    "RunPaths",
    "TrainConfig",
    "TrainModeView",
    "TrainResult",
    "TrainingInterrupted",
    "ensure_trained",
    "identity",
    "launch",
    "load_trained",
    "train",
    "train_seconds",
    "train_step",
]
