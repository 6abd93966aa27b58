"""Run an experiment of any kind and write its table (JSON, Markdown) and figures under its directory."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..files import atomic_write_text
from ..report import markdown_table
from ..train import train_seconds
from .configs import Experiment, load_experiment
from .directory import claim_directory
from .kinds import KIND_REGISTRY
from .tables import complete_rows, table_columns
from .training import run_state, select_runs

__all__ = ["reproduce", "write_table"]


def _device(runs: list[dict[str, Any]]) -> str:
    dev = torch.device(runs[0].get("device", "cpu")) if runs else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"


def write_table(exp: Experiment, rows: list[dict[str, Any]], figures: list[Path], out: Path, seconds: float,
                smallest: bool) -> dict:
    """Write ``table.json`` and ``table.md`` of an experiment into ``out``; return the JSON document.

    Besides the rows, the document counts the training runs by state (``runs``: finished, failed, skipped,
    pending), sums the training time of the finished ones and counts the rows that ``failed``.
    """
    states = [run_state(out, run["id"]) for run in exp.runs]
    rows = complete_rows(rows)
    doc = {
        "experiment": exp.name, "version": exp.version, "kind": exp.kind, "description": exp.description,
        "smallest": smallest, "device": _device(exp.runs), "robustlr_version": __version__,
        "torch_version": torch.__version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_this_invocation": seconds, "runs_expected": len(exp.runs),
        "runs": dict(Counter(s.status for s in states)),
        "train_seconds": sum(train_seconds(out / s.run) for s in states if s.status == "finished"),
        "failed": sum(r.get("status") == "failed" for r in rows), "settings": exp.settings, "rows": rows,
        "figures": [p.name for p in figures],
    }
    atomic_write_text(out / "table.json", json.dumps(doc, indent=2))
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in figures)
    table = markdown_table(rows, table_columns(rows)) if rows else "(no finished runs yet)\n"
    atomic_write_text(out / "table.md", f"# {exp.name}\n\n{exp.description}\n\n{table}{images}")
    return doc


def reproduce(name: str, out: Path | None = None, *, smallest: bool = False, only: list[str] | None = None,
              progress: bool = True, directory: Path | None = None) -> dict:
    """Run experiment ``name`` of ``directory`` (default ``experiments/``): finished units are skipped, interrupted
    ones resumed, failed ones recorded in the table (``status`` ``failed``) while the others go on.  Writes and
    returns the table document (see :func:`write_table`).

    Everything is checked before any work: the config, ``only`` (ids of its runs) and ``out``, which must be new,
    empty or the directory of this experiment and variant (:func:`~robustlr.reproduce.directory.claim_directory`);
    each raises a ``ValueError`` that leaves ``out`` as it was.
    """
    exp = load_experiment(name, smallest=smallest, directory=directory)
    out = Path(out) if out else Path("runs") / "reproduce" / (f"{name}-smallest" if smallest else name)
    select_runs(exp, only)
    claim_directory(exp, out, smallest)
    kind = KIND_REGISTRY[exp.kind]
    t0 = time.perf_counter()
    kind.run(exp, out, only, progress)
    return write_table(exp, kind.rows(exp, out), kind.figures(exp, out), out, time.perf_counter() - t0, smallest)
