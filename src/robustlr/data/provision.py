"""``provision``: make a stored dataset's files present on this machine, or say exactly why they cannot be.

The steps, in order, each tried only while some split is still missing:

1. the files are found where :func:`robustlr.data.find_split_files` looks: used as they are;
2. the dataset has a Debian package and ``apt-get`` can run (Debian, root): one line says so, then
   ``apt-get install -y <package>`` (after ``apt-get update`` and a retry if it fails);
3. the checksum-verified download (:func:`robustlr.data.download_dataset`) into
   :func:`robustlr.data.download_dir` (``$ROBUSTLR_DATA/<name>`` or ``~/.cache/robustlr/<name>``);
4. otherwise :class:`~robustlr.data.DatasetNotFoundError`, with one line per step tried and why it failed.

A network error, a timeout, an ``apt-get`` failure or an unwritable directory never escapes as such: it is
a line of that error.  A ``root`` is data the user already has: it is the only place looked in and nothing is
installed or downloaded for it (a root that lacks the files is a :class:`~robustlr.data.DataRootError`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..checks import check_choice
from .apt import CommandRunner, apt_install, apt_unavailable
from .catalog import REMOTE_FILES, SPLITS, STORED_DATASETS, StoredDataset
from .discovery import DatasetNotFoundError, PathLike, download_dir, find_split_files, search_dirs
from .download import download_dataset

__all__ = ["provision"]

Notify = Callable[[str], None]


def _notice(line: str) -> None:
    """Default ``notify`` of :func:`provision`: the line on stderr."""
    print(line, file=sys.stderr, flush=True)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def _check_splits(splits: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (splits,) if isinstance(splits, str) else tuple(splits) if isinstance(splits, Sequence) else None
    if not chosen:
        raise ValueError(f"splits must be one of {SPLITS} or a non-empty sequence of them; got {splits!r}")
    for split in chosen:
        check_choice("split", split, SPLITS)
    return tuple(dict.fromkeys(chosen))


def _found(spec: StoredDataset, splits: Sequence[str]) -> tuple[dict[str, list[Path]], list[str]]:
    """The files of each split found in the default places, and the splits found nowhere."""
    files, missing = {}, []
    for split in splits:
        try:
            files[split] = find_split_files(spec, split)
        except DatasetNotFoundError:
            missing.append(split)
    return files, missing


def _apt_step(spec: StoredDataset, runner: CommandRunner | None, notify: Notify) -> str | None:
    """Install ``spec``'s Debian package; return why that could not be done, or ``None`` if it was installed."""
    command = f"apt-get install -y {spec.debian_package}"
    why_not = apt_unavailable()
    if why_not is not None:
        return f"{command}: not run: {why_not}"
    notify(f"robustlr: {spec.name} not found; installing the Debian package {spec.debian_package} with apt-get ...")
    try:
        apt_install(spec.debian_package, runner)  # type: ignore[arg-type]
    except OSError as error:
        notify(f"robustlr: {error}")
        return str(error)
    return None


def _download_step(spec: StoredDataset, progress: bool, notify: Notify) -> str | None:
    """Download ``spec`` into its download directory; return why that failed, or ``None`` if it worked."""
    target = download_dir(spec.name)
    notify(f"robustlr: {spec.name} not found; downloading it (checksum-verified) into {target} ...")
    try:
        download_dataset(spec.name, target, progress=progress)
    except OSError as error:  # DownloadError (network, timeout, truncation, checksum), PermissionError, ...
        return f"download into {target}: {error}"
    return None


def provision(
    name: str,
    splits: str | Sequence[str] = SPLITS,
    root: PathLike | None = None,
    *,
    apt: bool = True,
    download: bool = True,
    progress: bool = True,
    runner: CommandRunner | None = None,
    notify: Notify | None = None,
) -> dict[str, list[Path]]:
    """Make the files of ``splits`` of dataset ``name`` present (the steps are in the module docstring).

    Args:
        name: a dataset read from files (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``).
        splits: ``"train"``, ``"test"`` or a sequence of them (default both).
        root: a directory the user names: the only place looked in; nothing is installed or downloaded.
        apt: allow installing the Debian package (where the dataset has one and ``apt-get`` can run).
        download: allow the checksum-verified download.
        progress: show the download's progress bar.
        runner: runs the ``apt-get`` commands (default :data:`robustlr.data.apt.run_command`).
        notify: receives each one-line notice (default: printed on stderr).

    Returns:
        split -> the files of that split, as :func:`robustlr.data.find_split_files` gives them.

    Raises:
        ValueError: for an unknown ``name`` or split, ``apt``/``download``/``progress`` not a bool, or
            ``runner``/``notify`` neither callable nor ``None``.
        DataRootError, NotADirectoryError: for a ``root`` that does not hold the files (naming it).
        DatasetNotFoundError: if no step made the files present; its ``tried`` lists each step and why it failed.
    """
    check_choice("name", name, tuple(STORED_DATASETS))
    chosen = _check_splits(splits)
    for flag, value in (("apt", apt), ("download", download), ("progress", progress)):
        _check_flag(flag, value)
    for hook, value in (("runner", runner), ("notify", notify)):
        if value is not None and not callable(value):
            raise ValueError(f"{hook} must be a callable or None; got {value!r}")
    spec = STORED_DATASETS[name]
    if root is not None:
        return {split: find_split_files(spec, split, root) for split in chosen}
    say = notify if notify is not None else _notice
    files, missing = _found(spec, chosen)
    steps: list[tuple[str, Callable[[], str | None]]] = []
    if apt and spec.debian_package:
        steps.append((f"apt-get install -y {spec.debian_package}", lambda: _apt_step(spec, runner, say)))
    if name in REMOTE_FILES:
        if download:
            steps.append((f"download into {download_dir(name)}", lambda: _download_step(spec, progress, say)))
        else:
            steps.append(("download", lambda: "download: not tried (download=False; CLI: --no-download)"))
    tried: list[str] = []
    for label, step in steps:
        if not missing:
            break
        failure = step()
        found, missing = _found(spec, missing)
        files.update(found)
        if failure is not None:
            tried.append(failure)
        elif missing:
            tried.append(f"{label}: finished, but the files are still in none of the searched places")
    if missing:
        raise DatasetNotFoundError(spec, missing[0], search_dirs(name), tried)
    return {split: files[split] for split in chosen}
