"""Training: dense, vanilla low-rank, CondLR and orthogonal-dense networks, with exact resume.

>>> from robustlr.train import TrainConfig, train
>>> result = train(TrainConfig(method="condlr", rank=0.2, tau=0.1, epochs=2, out="runs/x"))  # doctest: +SKIP
>>> result.history[-1]["val_accuracy"], result.evaluation["best"].clean_accuracy                  # doctest: +SKIP

Modules: :mod:`~robustlr.train.config` (settings and resume rules), :mod:`~robustlr.train.methods` (model,
optimiser and schedule of each method), :mod:`~robustlr.train.step` (one step, with the ``batch_transform``
hook), :mod:`~robustlr.train.metrics_log`, :mod:`~robustlr.train.checkpointing`,
:mod:`~robustlr.train.signals`, :mod:`~robustlr.train.final_eval`, :mod:`~robustlr.train.trainer`
(:func:`train`), and :mod:`~robustlr.train.quick` (a minimal loop for demos).
"""

from .checkpointing import RunPaths, load_trained
from .config import METHODS, RESUME_MAY_DIFFER, TrainConfig
from .signals import TrainingInterrupted
from .step import BatchTransform, NonFiniteLossError, identity, train_step
from .trainer import TrainResult, train

__all__ = [
    "METHODS",
    "RESUME_MAY_DIFFER",
    "BatchTransform",
    "NonFiniteLossError",
    "RunPaths",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "identity",
    "load_trained",
    "train",
    "train_step",
]
