"""Files robustlr writes and reads back.

Writes are atomic: a hidden temporary file next to the target, then ``os.replace``. A crash leaves either the
old file or the complete new one, never a half-written file, and no temporary file behind (it is removed when
the write fails).

Reads of the files robustlr wrote (:func:`read_json` for JSON records and sidecars, :func:`read_torch` for
checkpoints and resume states) turn every way such a file can be damaged (missing, empty, truncated, not
that kind of file) into one ``ValueError`` that names what the file is, its path and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["TorchObjectsError", "atomic_write_bytes", "atomic_write_text", "file_stem", "read_json", "read_torch"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent directories; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # permissions follow the umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent directories; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_stem(label: str) -> str:
    """A label such as ``"lora-pgd r=3"`` as a file-name stem: ``"lora-pgd_r3"``."""
    return label.replace(" ", "_").replace("=", "")


def _existing(path: str | os.PathLike, what: str) -> tuple[Path, int]:
    """``path`` as a Path and its size in bytes; ``ValueError`` if it is not a file."""
    target = Path(path)
    if not target.is_file():
        problem = "is a directory, not a file" if target.is_dir() else "does not exist"
        raise ValueError(f"{what} {str(target)!r} {problem}")
    return target, target.stat().st_size


def read_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """The JSON object stored in ``path`` (UTF-8).

    ``what`` says what the file is in the errors (``"sidecar"``, ``"config"`` ...).

    Raises:
        ValueError: ``"<what> '<path>' ..."`` when the file does not exist, is empty (0 bytes), is not UTF-8
            text, is not valid JSON (with the line and column of the first error) or holds a JSON value other
            than an object (naming its type).
    """
    target, size = _existing(path, what)
    if size == 0:
        raise ValueError(f"{what} {str(target)!r} is empty (0 bytes); expected a JSON object")
    try:
        text = target.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {str(target)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         "expected a JSON object") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {str(target)!r} is not valid JSON (line {error.lineno} column {error.colno}: "
                         f"{error.msg}); truncated or edited by hand?") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {str(target)!r}: expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class TorchObjectsError(ValueError):
    """A torch file that pickles Python objects other than tensors and plain containers, which
    ``torch.load(weights_only=True)`` refuses to execute (e.g. a whole module saved with ``torch.save(model)``)."""


def read_torch(path: str | os.PathLike, what: str = "torch file", *, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True, map_location=map_location)``, with errors that say what is wrong.

    ``what`` says what the file is in the errors (``"checkpoint"``, ``"resume state"`` ...).

    Raises:
        ValueError: ``"<what> '<path>' ..."`` when the file does not exist, is empty (0 bytes), or is not a
            torch file (truncated or corrupt, with torch's reason in one line).
        TorchObjectsError: (a ValueError) when it is a torch file that pickles objects other than tensors.
    """
    target, size = _existing(path, what)
    if size == 0:
        raise ValueError(f"{what} {str(target)!r} is empty (0 bytes); it was never written completely")
    try:
        return torch.load(target, weights_only=True, map_location=map_location)
    except Exception as error:  # torch raises many kinds (RuntimeError, UnpicklingError, EOFError, OSError ...)
        archive = zipfile.is_zipfile(target)
        if archive and isinstance(error, pickle.UnpicklingError):
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            held = f" (it holds a {found.group(1)})" if found else ""
            raise TorchObjectsError(f"{what} {str(target)!r} pickles Python objects other than tensors{held}, which "
                                    "torch.load(weights_only=True) does not execute") from None
        reason = _first_sentence(error) if archive else "not a complete zip archive, which torch.save writes"
        raise ValueError(f"{what} {str(target)!r} is not a torch file (truncated or corrupt: {reason}; "
                         f"{size} bytes)") from None


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an exception's message on one line (torch's messages run over many lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")
