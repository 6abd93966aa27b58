"""``robustlr reproduce NAME``: the papers' experiments from versioned configs in ``experiments/``."""

from .configs import KINDS, Experiment, available, experiments_dir, load_experiment
from .runner import reproduce

__all__ = ["KINDS", "Experiment", "available", "experiments_dir", "load_experiment", "reproduce"]
