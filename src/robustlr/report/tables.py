"""One table renderer for Markdown and for aligned plain text.

``columns`` is a sequence of row keys (also used as headers) or a mapping ``key -> header``.  Cells: ``None``
is shown as ``—``, floats with 4 significant digits, anything else with ``str``; numeric columns are
right-aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["markdown_table", "format_table", "format_cell"]

Columns = Sequence[str] | Mapping[str, str]


def format_cell(value: Any) -> str:
    """Text of one cell: ``—`` for ``None``, ``{:.4g}`` for floats, ``str`` otherwise."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Columns) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (``|`` in cells escaped), ending with a newline."""
    return _render(rows, columns, markdown=True)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Columns) -> str:
    """A plain-text table with aligned columns and a dashed header rule, ending with a newline."""
    return _render(rows, columns, markdown=False)


def _render(rows: Sequence[Mapping[str, Any]], columns: Columns, markdown: bool) -> str:
    headers = _headers(columns)
    keys = list(headers)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows must be mappings column -> value, got {type(row).__name__} at rows[{i}]")
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks column(s) {missing}; columns are {keys}, the row has {list(row)}")
    cells = [[_clean(format_cell(row[k]), markdown) for k in keys] for row in rows]
    head = [_clean(headers[k], markdown) for k in keys]
    numeric = [_is_numeric([row[k] for row in rows]) for k in keys]
    widths = [max([len(head[j])] + [len(line[j]) for line in cells]) for j in range(len(keys))]
    if markdown:
        widths = [max(w, 3) for w in widths]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = "| " + " | ".join("-" * (w - 1) + ":" if right else "-" * w for w, right in zip(widths, numeric)) + " |"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule] + [line(values) for values in cells]) + "\n"


def _clean(text: str, markdown: bool) -> str:
    """One-line cell text; ``|`` escaped in Markdown."""
    text = text.replace("\n", " ")
    return text.replace("|", r"\|") if markdown else text


def _headers(columns: Columns) -> dict[str, str]:
    if isinstance(columns, Mapping):
        headers = {k: v for k, v in columns.items()}
    elif isinstance(columns, Sequence) and not isinstance(columns, str):
        headers = {k: k for k in columns}
    else:
        raise ValueError(f"columns must be a sequence of keys or a mapping key -> header, got {columns!r}")
    if not headers or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError(f"columns must hold at least one string key (with string headers), got {columns!r}")
    return headers


def _is_numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
