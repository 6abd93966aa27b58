"""An experiment's table: its column layout (every row gets every column, status and error come last) and the
reader of its ``table.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .records import read_object

__all__ = ["LAST_COLUMNS", "TABLE_KEYS", "read_table", "table_columns", "complete_rows"]

LAST_COLUMNS = ("status", "error")

TABLE_KEYS: dict[str, tuple[type, ...]] = {
    "experiment": (str,), "version": (int,), "description": (str,), "device": (str,), "robustlr_version": (str,),
    "torch_version": (str,), "finished": (str,), "runs_expected": (int,), "rows": (list,),
}
"""The keys every ``table.json`` holds, with their JSON types (:func:`robustlr.reproduce.runner.write_table`)."""

_OPTIONAL_KEYS: dict[str, tuple[type, ...]] = {
    "smallest": (bool,), "runs": (dict,), "train_seconds": (int, float), "figures": (list,),
}


def read_table(path: Path) -> dict[str, Any]:
    """The document of the ``table.json`` at ``path``.

    Checked: valid JSON; an object with every key of :data:`TABLE_KEYS`, each of its type (and ``smallest``,
    ``runs``, ``train_seconds``, ``figures`` of theirs when present); ``rows`` a list of objects, ``figures`` a list
    of file names, ``runs`` counts by status.  Raises ``ValueError`` naming ``path`` and what is wrong.
    """
    doc = read_object(path, "table", tuple(TABLE_KEYS))
    for key, types in {**TABLE_KEYS, **_OPTIONAL_KEYS}.items():
        value = doc.get(key)
        wrong = key in doc and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types))
        if wrong:
            raise ValueError(f"table {str(path)!r}: {key} must be a JSON {' or '.join(t.__name__ for t in types)}, "
                             f"got {value!r:.80}")
    parts = {"rows": (doc["rows"], dict, "objects"), "figures": (doc.get("figures", []), str, "file names"),
             "runs": (list(doc.get("runs", {}).values()), int, "counts")}
    for key, (values, kind, what) in parts.items():
        bad = [v for v in values if not isinstance(v, kind) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"table {str(path)!r}: {key} must hold {what} only, got {bad[0]!r:.80}")
    return doc


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of ``rows`` in order of first appearance, with :data:`LAST_COLUMNS` moved to the end."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [k for k in keys if k not in LAST_COLUMNS] + [k for k in LAST_COLUMNS if k in keys]


def complete_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every column of :func:`table_columns`, in that order (``None`` where a row has no value)."""
    columns = table_columns(rows)
    return [{k: row.get(k) for k in columns} for row in rows]
