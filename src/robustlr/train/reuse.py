"""Train, resume or reuse: what every driver of several runs (``robustlr demo``, ``robustlr reproduce``) does
with each run, so that stopping it and starting it again loses at most the current batch."""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig, config_differences
from .trainer import train

__all__ = ["ensure_trained", "train_seconds"]


def _finished(config: TrainConfig) -> bool:
    """Whether ``config.out`` holds a finished run of ``config`` (``ValueError`` if it holds one of other
    settings; ``False`` for a finished run with fewer or more epochs, which the trainer's resume extends or
    refuses)."""
    out = Path(config.out)
    if not (out / "summary.json").is_file():
        return False
    stored = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    differences = config_differences(stored, config)
    if differences:
        raise ValueError(f"out {str(out)!r} holds a finished run with other settings {differences} (stored, wanted); "
                         "allowed: an empty directory, or a run of the same settings (it is then reused)")
    return stored.epochs == config.epochs


def ensure_trained(config: TrainConfig, progress: bool = True) -> bool:
    """Make ``config.out`` hold a finished run of ``config``: reuse a finished run of the same settings, resume
    an interrupted one from its ``resume.pt``, or train a new one.  Returns whether any training happened.

    Raises:
        ValueError: if ``config.out`` holds a run of other settings (naming the differing keys), or whatever
            :func:`~robustlr.train.train` raises (e.g. :class:`~robustlr.train.NonFiniteLossError`).
    """
    if _finished(config):
        return False
    train(config, progress=progress, resume=(Path(config.out) / "resume.pt").is_file())
    return True


def train_seconds(run_dir: Path) -> float:
    """Seconds spent in the training epochs of the run in ``run_dir`` (from its ``metrics.json``)."""
    return sum(record["seconds"] for record in json.loads((Path(run_dir) / "metrics.json").read_text())["history"])
