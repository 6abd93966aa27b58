"""The stored result of one unit of work (an attack cell, a model's spectra), tied to the settings it used.

A record is reused only while the settings it was computed with are still the experiment's: change the ε
grid, say, and the next invocation computes it again instead of tabulating a stale result.  A record that
cannot be read (not JSON, not an object with its settings and the keys its kind stores) is not a result either:
one line says so and the unit counts as not computed, so the next invocation computes it again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..files import atomic_write_text, read_json

__all__ = ["read_object", "read_record", "read_or_none", "write_record"]


def read_object(path: Path, what: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object at ``path`` (:func:`robustlr.files.read_json`), which must hold every key of ``keys``.

    Raises:
        ValueError: ``"<what> '<path>' ..."``: missing, empty, not UTF-8, not valid JSON (line and column), not
            an object (its type), or lacking keys (listed, with the ones expected).
    """
    doc = read_json(path, what)
    missing = [key for key in keys if key not in doc]
    if missing:
        expected = f" (of {list(keys)})" if len(missing) < len(keys) else ""
        raise ValueError(f"{what} {str(path)!r} lacks the key(s) {missing}{expected}")
    return doc


def write_record(path: Path, settings: dict[str, Any], keys: Sequence[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` with the ``keys`` of ``settings`` it was computed with to ``path`` (atomically)."""
    atomic_write_text(path, json.dumps({"settings": {k: settings[k] for k in keys}, **payload}, indent=2))


def read_or_none(path: Path, what: str, keys: Sequence[str]) -> dict[str, Any] | None:
    """The JSON object at ``path`` with ``keys`` (:func:`read_object`); ``None`` if there is no file, or (with one
    line on stderr naming the file and the problem) if it cannot be read."""
    if not path.exists():
        return None
    try:
        return read_object(path, what, keys)
    except ValueError as error:
        tqdm.write(f"robustlr: {error}; counted as not done (the next run of the experiment redoes it)",
                   file=sys.stderr)
        return None


def read_record(path: Path, settings: dict[str, Any], keys: Sequence[str],
                payload: Sequence[str] = ()) -> dict[str, Any] | None:
    """The record at ``path`` if it can be read, holds the ``payload`` keys and was computed with the current
    ``keys`` of ``settings``, else ``None``."""
    record = read_or_none(path, "result record", ("settings", *payload))
    return record if record is not None and record["settings"] == {k: settings[k] for k in keys} else None
