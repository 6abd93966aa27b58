"""Versioned experiment configs (``experiments/*.toml``): loading and validation.

An experiment has a ``name``, a ``kind``, a ``version``, ``[defaults]`` shared by its runs, ``[smallest]``
overrides for the quickest variant (used by tests), and ``[[runs]]`` each with an ``id`` and its own keys.
For ``kind = "train-grid"`` every run is a :class:`robustlr.train.TrainConfig`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Experiment", "KINDS", "experiments_dir", "available", "load_experiment"]

KINDS = ("train-grid",)


def experiments_dir() -> Path:
    """The ``experiments/`` directory of the source tree (the versioned configs)."""
    return Path(__file__).resolve().parents[3] / "experiments"


def available(directory: Path | None = None) -> list[str]:
    """Names of the experiment configs in ``directory`` (default :func:`experiments_dir`)."""
    return sorted(p.stem for p in (directory or experiments_dir()).glob("*.toml"))


@dataclass
class Experiment:
    """A parsed experiment config; ``runs`` are fully merged (defaults, smallest overrides, run keys)."""

    name: str
    kind: str
    version: int
    description: str
    runs: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def load_experiment(name: str, *, smallest: bool = False, directory: Path | None = None) -> Experiment:
    """Read ``<directory>/<name>.toml``; with ``smallest`` apply its ``[smallest]`` overrides to every run."""
    directory = directory or experiments_dir()
    path = directory / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"experiment must be one of {available(directory)}, got {name!r}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"experiment config {str(path)!r} is not valid TOML: {exc}") from None
    for key in ("name", "kind", "version", "runs"):
        if key not in doc:
            raise ValueError(f"experiment config {str(path)!r} lacks the key {key!r}")
    if doc["kind"] not in KINDS:
        raise ValueError(f"experiment config {str(path)!r}: kind must be one of {KINDS}, got {doc['kind']!r}")
    defaults = dict(doc.get("defaults", {}))
    overrides = dict(doc.get("smallest", {})) if smallest else {}
    runs, seen = [], set()
    for i, run in enumerate(doc["runs"]):
        run_id = run.get("id")
        if not isinstance(run_id, str) or not run_id or run_id in seen or "/" in run_id:
            raise ValueError(f"experiment config {str(path)!r}: runs[{i}] needs a unique id without '/', got {run_id!r}")
        seen.add(run_id)
        runs.append({**defaults, **{k: v for k, v in run.items() if k != "id"}, **overrides, "id": run_id})
    settings = {k: v for k, v in doc.items() if k not in ("name", "kind", "version", "description", "defaults", "smallest", "runs")}
    if smallest and "smallest_settings" in doc:
        settings.update(doc["smallest_settings"])
    return Experiment(doc["name"], doc["kind"], int(doc["version"]), doc.get("description", ""), runs, settings, path)
