"""Run an experiment of any kind and write its table (JSON, Markdown) and figure under its directory."""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..files import atomic_write_text
from ..report import markdown_table
from .configs import Experiment, load_experiment
from .train_grid import run_train_grid, train_grid_figures, train_grid_rows

__all__ = ["reproduce", "write_table"]

_RUNNERS = {"train-grid": (run_train_grid, train_grid_rows, train_grid_figures)}
"""kind -> (run the experiment, its table rows, its figures)."""


def _device(runs: list[dict[str, Any]]) -> str:
    dev = torch.device(runs[0].get("device", "cpu")) if runs else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"


def write_table(exp: Experiment, rows: list[dict[str, Any]], figures: list[Path], out: Path, seconds: float,
                smallest: bool) -> dict:
    """Write ``table.json`` and ``table.md`` of an experiment into ``out``; return the JSON document."""
    doc = {
        "experiment": exp.name, "version": exp.version, "kind": exp.kind, "description": exp.description,
        "smallest": smallest, "device": _device(exp.runs), "robustlr_version": __version__,
        "torch_version": torch.__version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_this_invocation": seconds, "runs_expected": len(exp.runs), "rows": rows,
        "figures": [p.name for p in figures],
    }
    atomic_write_text(out / "table.json", json.dumps(doc, indent=2))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in figures)
    atomic_write_text(out / "table.md", f"# {exp.name}\n\n{exp.description}\n\n{markdown_table(rows, columns)}\n{images}")
    return doc


def reproduce(name: str, out: Path | None = None, *, smallest: bool = False, only: list[str] | None = None,
              progress: bool = True) -> dict:
    """Run experiment ``name`` (skipping finished runs, resuming interrupted ones) and write its table."""
    exp = load_experiment(name, smallest=smallest)
    out = Path(out) if out else Path("runs") / "reproduce" / (f"{name}-smallest" if smallest else name)
    run, rows_of, figures_of = _RUNNERS[exp.kind]
    t0 = time.perf_counter()
    run(exp, out, only=only, progress=progress)
    return write_table(exp, rows_of(exp, out), figures_of(exp, out), out, time.perf_counter() - t0, smallest)
