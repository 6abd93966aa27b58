"""Train, resume or reuse: what every driver of several runs (``robustlr demo``, ``robustlr reproduce``) does
with each run, so that stopping it and starting it again loses at most the current batch.

A run directory holds a *finished* run only when every file a reader of it needs can be read
(:func:`why_unfinished`): ``summary.json`` is a JSON object, and ``best.pt`` and ``last.pt`` with their sidecars
load as trained models (:func:`~robustlr.train.load_trained` on the CPU, which reads the weights with
``torch.load(weights_only=True)``).  A run
that is not finished is resumed from its ``resume.pt`` when that can be read and the resumed training rewrites
every unreadable checkpoint; otherwise its files are moved aside (``set-aside-N/``, nothing is deleted) and it is
trained again from scratch.  Either way one line says why.

The run's files are read with :func:`robustlr.files.read_json` and :func:`~robustlr.train.load_trained` (one
reader each, whose errors name the file and what is wrong with it).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..checks import is_real
from ..files import read_json
from ..models import sidecar_path
from .checkpointing import RunPaths, load_trained, read_resume
from .config import TrainConfig, config_differences
from .trainer import train

__all__ = ["SET_ASIDE", "ensure_trained", "refuse_differences", "train_seconds", "why_unfinished"]

SET_ASIDE = "set-aside"
"""Stem of the subdirectories (``set-aside-1``, ...) that keep the files of a run that could not be continued."""


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``path``, ``None`` if it is missing: a checkpoint is loaded again only when changed."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=256)
def _load_problem(path: str, stamp: tuple[int, int], sidecar_stamp: tuple[int, int] | None) -> str | None:
    """Why the checkpoint at ``path`` does not load as a trained model, or ``None`` (cached on the stamps of the
    file and its sidecar)."""
    try:
        load_trained(path)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        return " ".join(str(error).split())
    return None


def _checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` (weights and sidecar) cannot be read, or ``None`` if it can."""
    stamp = _stamp(path)
    if stamp is None or not path.is_file():
        return f"{path} is missing"
    return _load_problem(str(path), stamp, _stamp(sidecar_path(path)))


def why_unfinished(out: str | Path) -> str | None:
    """``None`` when ``out`` holds a finished run whose files can all be read (``summary.json`` a JSON object;
    ``best.pt`` and ``last.pt`` loadable with their sidecars), else why it does not."""
    paths = RunPaths(Path(out))
    if not paths.summary.exists():
        return f"{paths.summary} is missing"
    try:
        read_json(paths.summary, "run summary")
    except ValueError as error:
        return str(error)
    for checkpoint in (paths.last, paths.best):
        problem = _checkpoint_problem(checkpoint)
        if problem:
            return problem
    return None


def refuse_differences(holder: str, differences: Mapping[str, tuple[Any, Any]], allowed: str) -> None:
    """Refuse a directory that holds work of other settings: ``ValueError`` "``holder`` with other settings
    {key: (stored, wanted)}; allowed: ``allowed``" when ``differences`` is not empty (the one refusal of ``train``
    runs, the demo's networks and ``reproduce``'s experiment directories)."""
    if differences:
        raise ValueError(f"{holder} with other settings {dict(differences)} (stored, wanted); allowed: {allowed}")


def _refuse_other_settings(paths: RunPaths, config: TrainConfig) -> TrainConfig | None:
    """The stored config of the run in ``paths.out`` (``None`` if there is none); ``ValueError`` if it is of other
    settings than ``config`` (apart from :data:`~robustlr.train.config.RESUME_MAY_DIFFER`)."""
    if not paths.config.exists():
        return None
    try:
        stored = TrainConfig.from_stored(read_json(paths.config, "run config"))
    except ValueError as error:
        message = str(error) if str(paths.config) in str(error) else f"run config {str(paths.config)!r}: {error}"
        raise ValueError(f"{message}; allowed: the config.json that training wrote, or another out directory") from None
    refuse_differences(f"out {str(paths.out)!r} holds a run", config_differences(stored, config),
                       "an empty directory, or a run of the same settings (it is then reused)")
    return stored


def _resume_problem(paths: RunPaths, config: TrainConfig) -> str | None:
    """Why resuming from ``resume.pt`` would not give a finished run (``None``: it would): it must load, and the
    resumed training must rewrite every checkpoint that cannot be read (``last.pt`` after every epoch still to
    train; ``best.pt`` only when the validation improves, so that one must be readable already)."""
    try:
        epoch = read_resume(paths.resume)["progress"]["epoch"]
    except (ValueError, KeyError, TypeError) as error:
        return f"it cannot be resumed ({error})"
    if epoch == 0:
        return None
    best = _checkpoint_problem(paths.best)
    if best:
        return f"resuming would not rewrite best.pt ({best})"
    if epoch >= config.epochs and _checkpoint_problem(paths.last):
        return f"resuming would not rewrite last.pt ({paths.resume} is at the last epoch, {epoch})"
    return None


def _set_aside(out: Path) -> Path:
    """Move every file of the run in ``out`` (not earlier set-aside directories) into a new ``set-aside-N``."""
    n = 1
    while (out / f"{SET_ASIDE}-{n}").exists():
        n += 1
    aside = out / f"{SET_ASIDE}-{n}"
    entries = [p for p in out.iterdir() if not p.name.startswith(f"{SET_ASIDE}-")]
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    return aside


def _started(paths: RunPaths) -> bool:
    return any(p.exists() for p in (paths.config, paths.resume, paths.summary, paths.last, paths.best))


def ensure_trained(config: TrainConfig, progress: bool = True) -> bool:
    """Make ``config.out`` hold a finished run of ``config``: reuse a finished run of the same settings (extend it
    when ``config`` asks for more epochs), resume an unfinished one from its ``resume.pt``, or train a new one
    (see the module docstring for a run whose files cannot be read).  Returns whether any training happened.

    Raises:
        ValueError: if ``config.out`` holds a run of other settings (naming the differing keys) or an unreadable
            ``config.json`` (nothing is changed then), or whatever :func:`~robustlr.train.train` raises (e.g.
            :class:`~robustlr.train.NonFiniteLossError`).
    """
    paths = RunPaths(Path(config.out))
    stored = _refuse_other_settings(paths, config)
    problem = why_unfinished(paths.out)
    if problem is None and stored is not None:
        if stored.epochs == config.epochs:
            return False
        train(config, progress=progress, resume=paths.resume.is_file())
        return True
    if not _started(paths):
        train(config, progress=progress, resume=False)
        return True
    cannot_resume = _resume_problem(paths, config)
    if cannot_resume is None:
        if paths.summary.exists():
            tqdm.write(f"{paths.out}: not reused, {problem}; resuming from {paths.resume}", file=sys.stderr)
        train(config, progress=progress, resume=True)
        return True
    aside = _set_aside(paths.out)
    tqdm.write(f"{paths.out}: {problem}, and {cannot_resume}; training it again from scratch (its files are kept "
               f"in {aside})", file=sys.stderr)
    train(config, progress=progress, resume=False)
    return True


def train_seconds(run_dir: Path) -> float:
    """Seconds spent in the training epochs of the run in ``run_dir`` (from its ``metrics.json``; ``ValueError``
    naming the file if that is not an object with a ``history`` of epoch records with ``seconds``)."""
    path = Path(run_dir) / "metrics.json"
    history = read_json(path, "metrics log").get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) and is_real(r.get("seconds")) for r in history):
        raise ValueError(f"metrics log {str(path)!r}: history must be a list of epoch records with 'seconds'; "
                         f"got {history!r:.200}")
    return sum(record["seconds"] for record in history)
