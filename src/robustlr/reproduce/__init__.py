"""``robustlr reproduce NAME``: the papers' experiments from versioned configs in ``experiments/``.

Kinds: ``train-grid`` (train and evaluate a grid of runs), ``attack-table`` (PGD vs LoRa-PGD vs rank-projected PGD
on trained models), ``spectrum`` (singular spectra of PGD perturbations on trained models); every kind trains its
runs first with the shared, resumable :func:`~robustlr.reproduce.training.train_runs`.
"""

from .configs import KINDS, available, experiments_dir, load_experiment
from .experiment import Experiment
from .runner import reproduce

__all__ = ["KINDS", "Experiment", "available", "experiments_dir", "load_experiment", "reproduce"]
