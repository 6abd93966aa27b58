"""The stored result of one unit of work (an attack cell, a model's spectra), tied to the settings it used.

A record is reused only while the settings it was computed with are still the experiment's: change the ε
grid, say, and the next invocation computes it again instead of tabulating a stale result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

__all__ = ["read_record", "write_record"]


def write_record(path: Path, settings: dict[str, Any], keys: Sequence[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` with the ``keys`` of ``settings`` it was computed with to ``path`` (atomically)."""
    atomic_write_text(path, json.dumps({"settings": {k: settings[k] for k in keys}, **payload}, indent=2))


def read_record(path: Path, settings: dict[str, Any], keys: Sequence[str]) -> dict[str, Any] | None:
    """The record at ``path`` if it exists and was computed with the current ``keys`` of ``settings``, else ``None``."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == {k: settings[k] for k in keys} else None
