"""Versioned experiment configs (``experiments/*.toml``): loading and validation.

An experiment has a ``name`` (its file's stem), a ``kind`` (see :data:`KINDS`), a ``version``, a
``description``, ``[defaults]`` shared by its runs, ``[smallest]`` overrides for the quickest variant (used by
tests), and ``[[runs]]`` each with an ``id`` and its own keys: every run is a
:class:`robustlr.train.TrainConfig`.  Instead of its own runs, an experiment may name another one in
``models_from``: it then trains exactly that experiment's runs (its defaults and smallest overrides
included), in its own directory.  A kind with settings (``attack-table``: ``[attack]``, ``spectrum``:
``[spectrum]``) reads them from that table, and from ``[smallest.<table>]`` for the quickest variant.

Everything is checked when the config is loaded, before any work: every bad key or value raises a
``ValueError`` naming the config, the key, the value and what is allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ..train import TrainConfig
from .experiment import Experiment
from .kinds import KIND_REGISTRY
from .settings import check_settings

__all__ = ["Experiment", "KINDS", "experiments_dir", "available", "load_experiment"]

KINDS = tuple(KIND_REGISTRY)

_TOP_KEYS = ("name", "kind", "version", "description", "defaults", "smallest", "runs", "models_from")


def experiments_dir() -> Path:
    """The ``experiments/`` directory of the source tree (the versioned configs)."""
    return Path(__file__).resolve().parents[3] / "experiments"


def available(directory: Path | None = None) -> list[str]:
    """Names of the experiment configs in ``directory`` (default :func:`experiments_dir`)."""
    return sorted(p.stem for p in (directory or experiments_dir()).glob("*.toml"))


def _read(name: str, directory: Path) -> tuple[dict[str, Any], Path]:
    path = directory / f"{name}.toml"
    if not isinstance(name, str) or not path.is_file():
        raise ValueError(f"experiment must be one of {available(directory)}, got {name!r}")
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"experiment config {str(path)!r} is not valid TOML: {exc}") from None


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key} must be a table, got {value!r}")
    return dict(value)


def _merged_runs(doc: dict[str, Any], where: str, smallest: bool, settings_table: str | None) -> list[dict[str, Any]]:
    """``doc``'s runs merged with its defaults and (with ``smallest``) its ``[smallest]`` overrides (less the
    kind's ``[smallest.<settings_table>]``), each validated as a TrainConfig."""
    defaults = _table(doc, "defaults", where)
    overrides = _table(doc, "smallest", where) if smallest else {}
    overrides.pop(settings_table, None)
    if not isinstance(doc["runs"], list) or not doc["runs"]:
        raise ValueError(f"{where}: runs must be a non-empty array of tables ([[runs]]), got {doc['runs']!r}")
    runs, seen = [], set()
    for i, run in enumerate(doc["runs"]):
        run_id = run.get("id") if isinstance(run, dict) else None
        if not isinstance(run_id, str) or not run_id or run_id in seen or "/" in run_id:
            raise ValueError(f"{where}: runs[{i}] needs a unique id without '/', got {run_id!r}")
        seen.add(run_id)
        merged = {**defaults, **{k: v for k, v in run.items() if k != "id"}, **overrides, "id": run_id}
        try:
            TrainConfig.from_dict({**{k: v for k, v in merged.items() if k != "id"}, "out": "validation"})
        except ValueError as exc:
            raise ValueError(f"{where}: run {run_id!r}: {exc}") from None
        runs.append(merged)
    return runs


def load_experiment(name: str, *, smallest: bool = False, directory: Path | None = None) -> Experiment:
    """Read and validate ``<directory>/<name>.toml``; with ``smallest`` apply its ``[smallest]`` overrides."""
    directory = directory or experiments_dir()
    doc, path = _read(name, directory)
    where = f"experiment config {str(path)!r}"
    for key in ("name", "kind", "version"):
        if key not in doc:
            raise ValueError(f"{where} lacks the key {key!r}")
    if doc["name"] != name:
        raise ValueError(f"{where}: name must be the file's stem {name!r}, got {doc['name']!r}")
    if doc["kind"] not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {doc['kind']!r}")
    if isinstance(doc["version"], bool) or not isinstance(doc["version"], int) or doc["version"] < 1:
        raise ValueError(f"{where}: version must be an integer >= 1, got {doc['version']!r}")
    kind = KIND_REGISTRY[doc["kind"]]
    allowed = _TOP_KEYS + ((kind.settings_table,) if kind.settings_table else ())
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; allowed for kind {doc['kind']!r}: {list(allowed)}")
    runs = _runs(doc, where, directory, smallest, kind.settings_table)
    settings: dict[str, Any] = {}
    if kind.settings_table:
        table = _table(doc, kind.settings_table, where)
        if smallest:
            table.update(_table(_table(doc, "smallest", where), kind.settings_table, f"{where}: smallest"))
        settings = check_settings(f"{where}: {kind.settings_table}", table, kind.schema)
    return Experiment(doc["name"], doc["kind"], doc["version"], doc.get("description", ""), runs, settings, path)


def _runs(doc: dict[str, Any], where: str, directory: Path, smallest: bool, settings_table: str | None) -> list[dict]:
    source = doc.get("models_from")
    if source is None:
        if "runs" not in doc:
            raise ValueError(f"{where} lacks the key 'runs' (or 'models_from', the experiment whose runs it trains)")
        return _merged_runs(doc, where, smallest, settings_table)
    own = sorted(set(doc) & {"runs", "defaults"}) + sorted(set(_table(doc, "smallest", where)) - {settings_table})
    if own:
        raise ValueError(f"{where}: models_from = {source!r} trains that experiment's runs; remove {own} "
                         f"(allowed with models_from: [smallest.{settings_table}] only)")
    if source == doc["name"] or source not in available(directory):
        raise ValueError(f"{where}: models_from must name another experiment of {available(directory)}, got {source!r}")
    base, base_path = _read(source, directory)
    if "models_from" in base:
        raise ValueError(f"{where}: models_from must name an experiment with its own [[runs]]; "
                         f"{str(base_path)!r} has models_from = {base['models_from']!r} instead")
    return load_experiment(source, smallest=smallest, directory=directory).runs
