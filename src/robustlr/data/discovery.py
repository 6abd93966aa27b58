"""Where dataset files are looked for, and the error raised when they are nowhere.

Search order for a dataset called ``<name>``:

1. the ``root`` argument (``--data-root`` on the command line), then ``<root>/<name>``;
2. ``$ROBUSTLR_DATA``, then ``$ROBUSTLR_DATA/<name>``;
3. ``~/.cache/robustlr/<name>`` (where ``download=True`` puts files when neither of the above is set);
4. ``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST).

The first directory that holds every file of the requested split wins.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .catalog import StoredDataset

__all__ = [
    "DATA_ENV_VAR",
    "SYSTEM_DATA_DIR",
    "DatasetNotFoundError",
    "download_dir",
    "find_split_files",
    "search_dirs",
]

DATA_ENV_VAR = "ROBUSTLR_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

PathLike = str | os.PathLike[str]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset split are in none of the searched directories.

    Attributes:
        dataset: the dataset name.
        split: the split asked for.
        searched: every directory looked in, in search order.
    """

    def __init__(self, spec: StoredDataset, split: str, searched: Sequence[Path]) -> None:
        self.dataset = spec.name
        self.split = split
        self.searched = tuple(searched)
        needed = ", ".join(_spellings(name, spec.suffixes) for name in spec.split_files[split])
        places = "\n".join(f"  - {directory}" for directory in self.searched)
        ways = []
        if spec.debian_package:
            ways.append(f"install the Debian package: apt-get install {spec.debian_package}")
        ways.append(f"download it: --download on the command line, "
                    f"load_dataset({spec.name!r}, {split!r}, download=True) in Python")
        ways.append(f"point root= (CLI: --data-root) or ${DATA_ENV_VAR} at a directory holding the files")
        how = "\n".join(f"  - {way}" for way in ways)
        super().__init__(
            f"{spec.name} ({split} split) not found: no directory holds all of {needed}.\n"
            f"Looked in:\n{places}\nTo get the data:\n{how}"
        )


def _spellings(name: str, suffixes: Sequence[str]) -> str:
    """``name`` with each accepted suffix, e.g. ``x.gz (or x)``."""
    first, *others = (f"{name}{suffix}" for suffix in suffixes)
    return first + "".join(f" (or {other})" for other in others)


def search_dirs(name: str, root: PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order, without duplicates."""
    candidates: list[Path] = []
    for base in (root, os.environ.get(DATA_ENV_VAR) or None):
        if base is not None:
            base = Path(base).expanduser()
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


def _resolve(directory: Path, spec: StoredDataset, split: str) -> list[Path] | None:
    """The split's files inside ``directory`` (first existing spelling of each), or ``None`` if any is missing."""
    found = []
    for name in spec.split_files[split]:
        spellings = [directory / f"{name}{suffix}" for suffix in spec.suffixes]
        existing = next((path for path in spellings if path.is_file()), None)
        if existing is None:
            return None
        found.append(existing)
    return found


def find_split_files(spec: StoredDataset, split: str, root: PathLike | None = None) -> list[Path]:
    """The files of ``split`` of ``spec``, from the first directory of :func:`search_dirs` holding them all.

    Raises:
        DatasetNotFoundError: listing every directory searched and how to get the data.
    """
    searched = search_dirs(spec.name, root)
    for directory in searched:
        files = _resolve(directory, spec, split)
        if files is not None:
            return files
    raise DatasetNotFoundError(spec, split, searched)
