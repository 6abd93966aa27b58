"""The first stage of every experiment kind: train its ``[[runs]]`` (TrainConfig dicts) resumably.

Each run trains into ``out/<id>`` with :func:`robustlr.train.ensure_trained`: a finished run of the same
settings is reused, an interrupted one (``resume.pt``) is resumed, one of other settings fails.  A run is
finished only when its files can be read (:func:`robustlr.train.reuse.why_unfinished`): one with an empty or
damaged ``last.pt``, ``best.pt`` or ``summary.json`` is trained (resumed or redone) again.  A run whose data set is not on this machine is
*skipped* (``status.json`` says where it was looked for); a run that raises (a non-finite loss, a rank that
does not fit the model, …) is *failed* (``status.json`` holds the error) and the next run goes on.  Both are
attempted again by the next invocation.  A stop request (Ctrl-C, SIGTERM) stops everything, resumably.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import STORED_DATASETS, DatasetNotFoundError, find_split_files, load_dataset
from ..data.catalog import SPLITS
from ..files import atomic_write_text
from ..train import TrainConfig, TrainingInterrupted, ensure_trained, load_trained
from ..train.reuse import why_unfinished
from .experiment import Experiment
from .records import read_or_none

__all__ = ["CHECKPOINTS", "STATUS_FILE", "RunState", "attempt", "finished_runs", "load_run", "missing_data", "read_status", "run_state",
           "select_runs", "state_row", "train_config", "train_runs"]

CHECKPOINTS = ("best", "last")
"""The weights of a finished run that :func:`load_run` reads: the selected model, or the last one."""

STATUS_FILE = "status.json"
"""A failed or skipped unit's record (``{"status", "error"}``), removed once the unit succeeds."""


@dataclass(frozen=True)
class RunState:
    """Where a run stands: ``status`` is ``finished``, ``failed``, ``skipped`` or ``pending``; ``error`` says why
    a run failed or was skipped."""

    run: str
    status: str
    error: str | None = None


def train_config(run: dict[str, Any], out: Path) -> TrainConfig:
    """The :class:`TrainConfig` of ``run`` (its keys without ``id``), training into ``out/<id>``."""
    return TrainConfig.from_dict({**{k: v for k, v in run.items() if k != "id"}, "out": str(out / run["id"])})


def select_runs(exp: Experiment, only: list[str] | None) -> list[dict[str, Any]]:
    """The runs named by ``only`` (all when ``None``), in config order; ``ValueError`` for an unknown id."""
    ids = [r["id"] for r in exp.runs]
    unknown = sorted(set(only or []) - set(ids))
    if unknown:
        raise ValueError(f"--only must name runs of {exp.name} {ids}, got {unknown}")
    return [r for r in exp.runs if not only or r["id"] in only]


def missing_data(config: TrainConfig) -> str | None:
    """Why ``config``'s data set cannot be read on this machine (not found in any searched directory and
    ``download`` off), or ``None`` if it can."""
    spec = STORED_DATASETS.get(config.data)
    if spec is None or config.download:
        return None
    for split in SPLITS:
        try:
            find_split_files(spec, split, config.data_root)
        except DatasetNotFoundError as err:
            return f"{config.data} not found locally (looked in {', '.join(map(str, err.searched))})"
    return None


def _write_status(path: Path, status: str, error: str, **extra: str) -> None:
    atomic_write_text(path, json.dumps({"status": status, "error": error, **extra}, indent=2))


def attempt(status_path: Path, work: Callable[[], object], label: str) -> str | None:
    """Run ``work()``; if it raises an exception, record it in ``status_path`` as failed (with the traceback)
    and return its one-line message; on success remove ``status_path`` and return ``None``.

    A stop request (:class:`~robustlr.train.TrainingInterrupted`, ``KeyboardInterrupt``) is not a failure: it
    propagates, and the unit is resumed by the next invocation.
    """
    try:
        work()
    except TrainingInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed unit must not stop the experiment
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        _write_status(status_path, "failed", message, traceback=traceback.format_exc())
        tqdm.write(f"{label} failed: {message}", file=sys.stderr)
        return message
    status_path.unlink(missing_ok=True)
    return None


def train_runs(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> list[RunState]:
    """Train the runs of ``exp`` (those named by ``only``) into ``out/<id>`` as the module docstring says;
    return their states."""
    runs = select_runs(exp, only)
    for run in tqdm(runs, desc=f"{exp.name}: training", disable=not progress):
        run_dir = out / run["id"]
        config = train_config(run, out)
        missing = None if why_unfinished(run_dir) is None else missing_data(config)
        if missing is not None:
            _write_status(run_dir / STATUS_FILE, "skipped", missing)
            tqdm.write(f"{exp.name}: run {run['id']!r} skipped: {missing}", file=sys.stderr)
            continue
        attempt(run_dir / STATUS_FILE, lambda: ensure_trained(config, progress), f"{exp.name}: run {run['id']!r}")
    return [run_state(out, run["id"]) for run in runs]


def read_status(path: Path) -> tuple[str, str] | None:
    """``(status, error)`` of the failure or skip recorded at ``path``, or ``None`` if none is (also when the
    record cannot be read: the unit is then attempted again, see :func:`~robustlr.reproduce.records.read_or_none`)."""
    record = read_or_none(path, "status record", ("status", "error"))
    return None if record is None else (str(record["status"]), str(record["error"]))


def run_state(out: Path, run_id: str) -> RunState:
    """The state of run ``run_id`` as recorded in ``out/<run_id>``."""
    run_dir = out / run_id
    if why_unfinished(run_dir) is None:
        return RunState(run_id, "finished")
    recorded = read_status(run_dir / STATUS_FILE)
    return RunState(run_id, *recorded) if recorded else RunState(run_id, "pending")


def state_row(state: RunState, key: str = "run") -> dict[str, Any]:
    """The table row of a run that did not finish: its id under ``key``, ``status`` and ``error``."""
    return {key: state.run, "status": state.status, "error": state.error}


def finished_runs(exp: Experiment, out: Path, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield the runs of ``exp`` that finished training; append the row (:func:`state_row`, keyed ``model``) of
    each run that failed or was skipped to ``rows`` as it goes, so the table keeps the config's order."""
    for run in exp.runs:
        state = run_state(out, run["id"])
        if state.status == "finished":
            yield run
        elif state.status != "pending":
            rows.append(state_row(state, "model"))


def load_run(run: dict[str, Any], out: Path, checkpoint: str, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The trained model of a finished ``run`` (``checkpoint``: ``"best"`` or ``"last"``), in eval mode on the
    run's device, with the first ``n`` images and labels of its data set's test split."""
    config = train_config(run, out)
    model, _ = load_trained(out / run["id"] / f"{checkpoint}.pt", device=config.device)
    test = load_dataset(config.data, "test", root=config.data_root, download=config.download)
    if n > len(test):
        raise ValueError(f"n must be at most {len(test)} (the size of {config.data}'s test split), got {n}")
    images, labels = test[:n]
    return model, images.to(config.device), labels.to(config.device)
