"""The parsed form of one experiment config (``experiments/NAME.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Experiment"]


@dataclass
class Experiment:
    """A parsed, validated experiment config.

    ``runs`` are the training runs (one :class:`robustlr.train.TrainConfig` dict each, with its ``id``), fully
    merged: defaults, the run's keys, then the ``[smallest]`` overrides; ``settings`` is the kind's own table
    (e.g. the attack grid of ``kind = "attack-table"``) with its defaults filled in.
    """

    name: str
    kind: str
    version: int
    description: str
    runs: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
