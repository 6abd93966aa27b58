"""The output directory of a command (``--out``): checked before any work, never mixed with old files.

A command calls :func:`check_out` first (no side effects: a bad ``--out`` fails before data or models are
loaded), :meth:`OutDir.create` once its inputs are validated and before its work, and :meth:`OutDir.finish`
after its last file.  ``create`` writes a marker, :data:`MARKER`, naming the command; ``finish`` adds the list
of entries the run wrote.  A later run of the same command given the same ``--out`` removes exactly those
entries (all of them if the earlier run never finished: the directory was empty when it began) and says so;
any other non-empty directory is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..report import atomic_write_text
from .options import CliError, default_out

__all__ = ["MARKER", "OutDir", "check_out"]

MARKER = ".robustlr-output.json"
"""The file in an output directory that records which command wrote it and what it wrote."""


@dataclass
class OutDir:
    """An output directory: ``given`` is ``--out`` (``None``: a new ``runs/<command>-<stamp>-<n>``)."""

    command: str
    given: Path | None
    replaced: list[str]
    path: Path | None = None

    def create(self) -> Path:
        """Create the directory (or remove the earlier run's entries from it), write the marker; return it.

        Raises:
            CliError: naming ``--out`` and the system's reason if the directory cannot be created or written.
        """
        if self.given is None:
            self.path = default_out(self.command)
        else:
            self.path = self.given
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                for name in self.replaced:
                    _remove(self.path / name)
            except OSError as exc:
                raise CliError(f"--out {self.path}: cannot prepare the directory ({exc.strerror or exc})") from None
            if self.replaced:
                shown = ", ".join(self.replaced)
                print(f"robustlr: --out {self.path}: replacing the earlier `robustlr {self.command}` output ({shown})",
                      file=sys.stderr)
        self._write_marker(None)
        return self.path

    def finish(self) -> None:
        """Record in the marker every entry of the directory (all written by this run)."""
        assert self.path is not None, "create() first"
        written = sorted(_label(self.path / name) for name in os.listdir(self.path) if name != MARKER)
        self._write_marker(written)

    def _write_marker(self, written: list[str] | None) -> None:
        assert self.path is not None
        record = {"command": self.command, "complete": written is not None, "written": written or []}
        try:
            atomic_write_text(self.path / MARKER, json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            raise CliError(f"--out {self.path}: cannot write in the directory ({exc.strerror or exc})") from None


def check_out(args: argparse.Namespace, command: str) -> OutDir:
    """Check ``--out`` for ``command`` without touching the disk.

    Allowed: no ``--out`` (a new unique directory), a path that does not exist yet and can be created (its
    nearest existing ancestor is a writable directory), an empty writable directory, or a directory written
    by an earlier run of the same command (its marker lists what to replace; nothing else may be there).

    Raises:
        CliError: naming ``--out``, the path and why it cannot be used.
    """
    if not getattr(args, "out", None):
        return OutDir(command, None, [])
    path = Path(args.out)
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {path} is a file, not a directory; name a new or empty directory")
    if not path.exists():
        ancestor = next(p for p in path.absolute().parents if p.exists())
        if not ancestor.is_dir():
            raise CliError(f"--out {path}: cannot create it, {ancestor} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise CliError(f"--out {path}: cannot create it, {ancestor} is not writable")
        return OutDir(command, path, [])
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"--out {path} is not a writable directory")
    return OutDir(command, path, _earlier_output(path, command))


def _earlier_output(path: Path, command: str) -> list[str]:
    """The entries of ``path`` that an earlier run of ``command`` wrote (all of them; else CliError)."""
    entries = sorted(name for name in os.listdir(path) if name != MARKER)
    marker = path / MARKER
    if not marker.exists():
        if entries:
            raise CliError(f"--out {path} is not empty and was not written by robustlr {command}; "
                           "choose an empty or new directory")
        return []
    try:
        record = json.loads(marker.read_text())
        earlier, complete, listed = record["command"], record["complete"], record["written"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(f"--out {path}: its {MARKER} is unreadable; choose an empty or new directory") from None
    if earlier != command:
        raise CliError(f"--out {path} holds the output of robustlr {earlier}, not of robustlr {command}; "
                       "choose an empty or new directory")
    if complete:
        owned = {str(name).rstrip("/") for name in listed}
        foreign = [name for name in entries if name not in owned]
        if foreign:
            raise CliError(f"--out {path} holds files the earlier robustlr {command} did not write "
                           f"({', '.join(foreign)}); choose an empty or new directory")
    return [_label(path / name) for name in entries]


def _label(path: Path) -> str:
    return f"{path.name}/" if path.is_dir() and not path.is_symlink() else path.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
