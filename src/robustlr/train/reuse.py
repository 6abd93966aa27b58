"""Train, resume or reuse: what every driver of several runs (``robustlr demo``, ``robustlr reproduce``) does
with each run, so that stopping it and starting it again loses at most the current batch.

A run directory holds a *finished* run only when every file a reader of it needs can be read
(:func:`why_unfinished`): ``summary.json`` is a JSON object, and ``best.pt`` and ``last.pt`` load (``torch.load``
with ``weights_only=True`` on the CPU) with a sidecar that is a JSON object naming the training config.  A run
that is not finished is resumed from its ``resume.pt`` when that can be read and the resumed training rewrites
every unreadable checkpoint; otherwise its files are moved aside (``set-aside-N/``, nothing is deleted) and it is
trained again from scratch.  Either way one line says why.

:func:`read_json` is the one reader of the JSON files that runs and experiments leave behind: a missing file,
text that is not JSON, or JSON that is not an object with the expected keys is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import sidecar_path
from .checkpointing import RunPaths, read_resume
from .config import TrainConfig, config_differences
from .trainer import train

__all__ = ["SET_ASIDE", "ensure_trained", "read_json", "train_seconds", "why_unfinished"]

SET_ASIDE = "set-aside"
"""Stem of the subdirectories (``set-aside-1``, ...) that keep the files of a run that could not be continued."""


def read_json(path: str | Path, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object stored at ``path``, which must hold every key of ``keys``.

    Raises:
        ValueError: naming ``path`` when the file is missing or unreadable, is not valid JSON (UTF-8), is not a
            JSON object, or lacks one of ``keys``.
    """
    expected = f"a JSON object with the keys {list(keys)}" if keys else "a JSON object"
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; expected {expected}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected {expected}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected {expected}, got {type(doc).__name__}")
    missing = [key for key in keys if key not in doc]
    if missing:
        raise ValueError(f"{path}: expected {expected}; missing {missing}")
    return doc


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``path``, ``None`` if it is missing: a checkpoint is loaded again only when changed."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=256)
def _load_problem(path: str, stamp: tuple[int, int], sidecar_stamp: tuple[int, int] | None) -> str | None:
    """Why the checkpoint at ``path`` does not load, or ``None`` (cached on the stamps of the file and its
    sidecar)."""
    if stamp[1] == 0:
        return f"{path} is empty (0 bytes)"
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        return f"{path} does not load ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    try:
        read_json(sidecar_path(path), ("train_config", "model_args"))
    except ValueError as error:
        return str(error)
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
        read_json(paths.summary)
    except ValueError as error:
        return str(error)
    for checkpoint in (paths.last, paths.best):
        problem = _checkpoint_problem(checkpoint)
        if problem:
            return problem
    return None


def _refuse_other_settings(paths: RunPaths, config: TrainConfig) -> TrainConfig | None:
    """The stored config of the run in ``paths.out`` (``None`` if there is none); ``ValueError`` if it is of other
    settings than ``config`` (apart from :data:`~robustlr.train.config.RESUME_MAY_DIFFER`)."""
    if not paths.config.exists():
        return None
    try:
        stored = TrainConfig.from_dict(read_json(paths.config))
    except ValueError as error:
        message = str(error) if str(error).startswith(str(paths.config)) else f"{paths.config}: {error}"
        raise ValueError(f"{message}; allowed: the config.json that training wrote, or another out directory") from None
    differences = config_differences(stored, config)
    if differences:
        raise ValueError(f"out {str(paths.out)!r} holds a run with other settings {differences} (stored, wanted); "
                         "allowed: an empty directory, or a run of the same settings (it is then reused)")
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
        train(config, progress=progress)
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
    train(config, progress=progress)
    return True


def train_seconds(run_dir: Path) -> float:
    """Seconds spent in the training epochs of the run in ``run_dir`` (from its ``metrics.json``; ``ValueError``
    naming the file if that is not an object with a ``history`` of epoch records with ``seconds``)."""
    path = Path(run_dir) / "metrics.json"
    history = read_json(path, ("history",))["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) and "seconds" in r for r in history):
        raise ValueError(f"{path}: history must be a list of epoch records with 'seconds'; got {history!r:.200}")
    return sum(record["seconds"] for record in history)
