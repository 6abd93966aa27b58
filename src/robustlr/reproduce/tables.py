"""The column layout of an experiment's table: every row gets every column, status and error come last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LAST_COLUMNS", "table_columns", "complete_rows"]

LAST_COLUMNS = ("status", "error")


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of ``rows`` in order of first appearance, with :data:`LAST_COLUMNS` moved to the end."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [k for k in keys if k not in LAST_COLUMNS] + [k for k in LAST_COLUMNS if k in keys]


def complete_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every column of :func:`table_columns`, in that order (``None`` where a row has no value)."""
    columns = table_columns(rows)
    return [{k: row.get(k) for k in columns} for row in rows]
