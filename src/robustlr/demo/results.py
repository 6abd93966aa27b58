"""The demo's measurements: one :class:`ModelResult` per trained network, gathered in a :class:`DemoResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate import EvaluationResult
from ..evaluation.result import same_eps
from ..evaluation.spectrum import SpectrumStats
from ..train import TrainConfig
from .settings import DemoSettings

__all__ = ["DemoResult", "ModelResult"]


@dataclass
class ModelResult:
    """One trained network and what the demo measured on it."""

    name: str
    config: TrainConfig
    summary: dict[str, Any]
    train_seconds: float
    evaluations: dict[str, EvaluationResult]
    kappa: dict[str, float]
    spectrum: list[SpectrumStats]

    @property
    def compression(self) -> dict[str, Any]:
        """The trainer's compression report (per-layer rows and totals) of the trained network."""
        return self.summary["compression"]

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the attacked test images without attack."""
        return next(iter(self.evaluations.values())).clean_accuracy

    def accuracy(self, attack: str, eps: float) -> float:
        """Robust accuracy under ``attack`` at budget ``eps`` (the clean accuracy at ε = 0)."""
        if eps == 0:
            return self.clean_accuracy
        for result in self.evaluations.values():
            for row in result.attacks:
                if row.attack == attack and same_eps(row.eps, eps):
                    return row.robust_accuracy
        raise ValueError(f"attack {attack!r} at eps {eps:g} was not evaluated on {self.name}")


@dataclass
class DemoResult:
    """Everything the demo measured; ``out`` holds its files; ``failed`` maps a network that diverged during
    training to the trainer's message."""

    settings: DemoSettings
    models: list[ModelResult]
    out: Path
    failed: dict[str, str] = field(default_factory=dict)
