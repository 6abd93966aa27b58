"""The experiment kinds: how each is run, tabulated and drawn, and the settings table it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attack_table import ATTACK_SCHEMA, attack_table_figures, attack_table_rows, run_attack_table
from .experiment import Experiment
from .settings import Schema
from .spectrum_table import SPECTRUM_SCHEMA, run_spectrum, spectrum_figures, spectrum_rows
from .suite_table import SUITE_SCHEMA, run_suite_table, suite_table_figures, suite_table_rows
from .train_grid import run_train_grid, train_grid_figures, train_grid_rows

__all__ = ["Kind", "KIND_REGISTRY"]


@dataclass(frozen=True)
class Kind:
    """An experiment kind: ``run(exp, out, only, progress)`` does (or resumes) the work, ``rows(exp, out)`` and
    ``figures(exp, out)`` tabulate and draw what is on disk; ``settings_table`` names the config table read with
    ``schema`` (``None``: the kind has no settings)."""

    run: Callable[[Experiment, Path, list[str] | None, bool], None]
    rows: Callable[[Experiment, Path], list[dict[str, Any]]]
    figures: Callable[[Experiment, Path], list[Path]]
    settings_table: str | None = None
    schema: Schema = field(default_factory=dict)


KIND_REGISTRY: dict[str, Kind] = {
    "train-grid": Kind(run_train_grid, train_grid_rows, train_grid_figures),
    "attack-table": Kind(run_attack_table, attack_table_rows, attack_table_figures, "attack", ATTACK_SCHEMA),
    "spectrum": Kind(run_spectrum, spectrum_rows, spectrum_figures, "spectrum", SPECTRUM_SCHEMA),
    "suite-table": Kind(run_suite_table, suite_table_rows, suite_table_figures, "suite", SUITE_SCHEMA),
}
"""kind name -> :class:`Kind` (see :mod:`robustlr.reproduce.train_grid`, :mod:`~robustlr.reproduce.attack_table`,
:mod:`~robustlr.reproduce.spectrum_table`)."""
