"""Where dataset files are looked for, and the errors raised when they are not there.

Without ``root``, a dataset called ``<name>`` is searched in, in order:

1. ``$ROBUSTLR_DATA``, then ``$ROBUSTLR_DATA/<name>``;
2. ``~/.cache/robustlr/<name>`` (where downloads go when ``$ROBUSTLR_DATA`` is not set);
3. ``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST).

The first directory that holds every file of the requested split wins.

A ``root`` (``--data-root`` on the command line) is the *only* place looked in: ``root``, then
``<root>/<name>``.  A root that is not a directory is a :class:`NotADirectoryError`; one that does not
exist or holds no complete split is a :class:`DataRootError` naming it and the files it lacks; the data
is never taken from elsewhere instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .catalog import StoredDataset

__all__ = [
    "DATA_ENV_VAR",
    "SYSTEM_DATA_DIR",
    "DataRootError",
    "DatasetNotFoundError",
    "download_dir",
    "find_split_files",
    "root_dir",
    "search_dirs",
]

DATA_ENV_VAR = "ROBUSTLR_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

PathLike = str | os.PathLike[str]

ROOT_OPTION = "root= (CLI: --data-root)"
"""How the error messages name the root argument: the library's parameter and the command-line option."""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset split are in none of the searched directories.

    Attributes:
        dataset: the dataset name.
        split: the split asked for.
        searched: every directory looked in, in search order.
        tried: what was done to get the data and why each step failed (one line each; empty if nothing was).
    """

    def __init__(
        self, spec: StoredDataset, split: str, searched: Sequence[Path], tried: Sequence[str] = ()
    ) -> None:
        self.dataset = spec.name
        self.split = split
        self.searched = tuple(searched)
        self.tried = tuple(tried)
        needed = ", ".join(_spellings(name, spec.suffixes) for name in spec.split_files[split])
        places = "\n".join(f"  - {directory}" for directory in self.searched)
        attempts = "".join(f"\n  - {attempt}" for attempt in self.tried)
        ways = []
        if spec.debian_package:
            ways.append(f"install the Debian package: apt-get install {spec.debian_package}")
        ways.append(f"download it: --download on the command line, "
                    f"load_dataset({spec.name!r}, {split!r}, download=True) in Python")
        ways.append(f"point {ROOT_OPTION} or ${DATA_ENV_VAR} at a directory holding the files")
        how = "\n".join(f"  - {way}" for way in ways)
        super().__init__(
            f"{spec.name} ({split} split) not found: no directory holds all of {needed}.\n"
            f"Looked in:\n{places}\n" + (f"Tried:{attempts}\n" if attempts else "") + f"To get the data:\n{how}"
        )


class DataRootError(DatasetNotFoundError):
    """The root the user named (``root=``, ``--data-root``) does not hold the split; nothing else was searched.

    Attributes (besides :class:`DatasetNotFoundError`'s):
        root: the directory named.
        missing: the files of the split that no searched directory holds (all of them if ``root`` does not exist).
    """

    def __init__(self, spec: StoredDataset, split: str, root: Path, missing: Sequence[str]) -> None:
        searched = search_dirs(spec.name, root)
        if not root.exists():
            problem = "does not exist"
        else:
            lacks = ", ".join(_spellings(name, spec.suffixes) for name in missing)
            problem = f"lacks {lacks} (looked in {' and '.join(map(str, searched))})"
        FileNotFoundError.__init__(
            self,
            f"{spec.name} ({split} split) not found: {ROOT_OPTION} {root} {problem}. A root you name is the only "
            f"place looked in: name the directory holding the files, or leave the root out to search "
            f"${DATA_ENV_VAR}, ~/.cache/robustlr and {SYSTEM_DATA_DIR}",
        )
        self.dataset, self.split, self.searched, self.tried = spec.name, split, tuple(searched), ()
        self.root = root
        self.missing = tuple(missing)


def _spellings(name: str, suffixes: Sequence[str]) -> str:
    """``name`` with each accepted suffix, e.g. ``x.gz (or x)``."""
    first, *others = (f"{name}{suffix}" for suffix in suffixes)
    return first + "".join(f" (or {other})" for other in others)


def root_dir(root: PathLike) -> Path:
    """``root`` as a ``Path`` (``~`` expanded), checked to be a directory or not to exist yet.

    Raises:
        ValueError: if ``root`` is not a path (a ``str`` or ``os.PathLike``) or is empty.
        NotADirectoryError: if ``root`` exists and is not a directory (naming it).
    """
    if not isinstance(root, (str, os.PathLike)) or not str(os.fspath(root)):
        raise ValueError(f"root (CLI: --data-root) must be a directory path; got {root!r}")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{ROOT_OPTION} {path} is not a directory; name the directory holding the dataset files"
        )
    return path


def search_dirs(name: str, root: PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order, without duplicates: ``root`` and
    ``<root>/<name>`` alone when a root is given, else the default places (module docstring)."""
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / name]
    candidates: list[Path] = []
    env = os.environ.get(DATA_ENV_VAR) or None
    if env is not None:
        base = Path(env).expanduser()
        candidates += [base, base / name]
    candidates += [Path.home() / ".cache" / "robustlr" / name, SYSTEM_DATA_DIR / name]
    return list(dict.fromkeys(candidates))


def download_dir(name: str, root: PathLike | None = None) -> Path:
    """Where ``download=True`` stores dataset ``name``: ``<root>/<name>``, else ``$ROBUSTLR_DATA/<name>``,
    else ``~/.cache/robustlr/<name>``; each is one of :func:`search_dirs`."""
    base = root if root is not None else os.environ.get(DATA_ENV_VAR) or None
    if base is None:
        return Path.home() / ".cache" / "robustlr" / name
    return Path(base).expanduser() / name


def _missing(directory: Path, spec: StoredDataset, split: str) -> list[str]:
    """The files of the split (stems) that ``directory`` lacks in every accepted spelling."""
    return [
        name for name in spec.split_files[split]
        if not any((directory / f"{name}{suffix}").is_file() for suffix in spec.suffixes)
    ]


def _resolve(directory: Path, spec: StoredDataset, split: str) -> list[Path] | None:
    """The split's files inside ``directory`` (first existing spelling of each), or ``None`` if any is missing."""
    if _missing(directory, spec, split):
        return None
    return [
        next(path for suffix in spec.suffixes if (path := directory / f"{name}{suffix}").is_file())
        for name in spec.split_files[split]
    ]


def find_split_files(spec: StoredDataset, split: str, root: PathLike | None = None) -> list[Path]:
    """The files of ``split`` of ``spec``, from the first directory of :func:`search_dirs` holding them all.

    Raises:
        ValueError, NotADirectoryError: for a ``root`` that is not a path or not a directory (:func:`root_dir`).
        DataRootError: if ``root`` is given and neither it nor ``<root>/<name>`` holds the split (naming
            the root and the files it lacks); nothing else is searched.
        DatasetNotFoundError: without ``root``, listing every directory searched and how to get the data.
    """
    base = None if root is None else root_dir(root)
    searched = search_dirs(spec.name, base)
    for directory in searched:
        files = _resolve(directory, spec, split)
        if files is not None:
            return files
    if base is not None:
        # report the files lacking from the candidate that comes closest (the root itself on a tie)
        missing = min((_missing(directory, spec, split) for directory in searched), key=len)
        raise DataRootError(spec, split, base, missing)
    raise DatasetNotFoundError(spec, split, searched)
