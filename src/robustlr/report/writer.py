"""``write_report``: result.json, result.csv, report.md and the robust-accuracy figure of one evaluation; with the
cascade also standard.csv (the standard evaluation in RobustBench's form) and stages.csv (the cascade's stages)."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..evaluation.result import EvaluationResult
from .figures import plot_robust_accuracy
from ..files import atomic_write_text
from .tables import format_cell, markdown_table

__all__ = ["write_report", "FILES", "CASCADE_FILES", "CSV_COLUMNS", "SUMMARY_COLUMNS", "STANDARD_COLUMNS",
           "STAGE_COLUMNS"]

FILES = {
    "json": "result.json",
    "csv": "result.csv",
    "markdown": "report.md",
    "robust_accuracy": "robust_accuracy.png",
}
"""Key of ``write_report``'s returned mapping -> file name inside ``out_dir``."""

CASCADE_FILES = {
    "standard": "standard.csv",
    "stages": "stages.csv",
}
"""The files ``write_report`` adds for an evaluation that ran the cascade (``result.cascade``; every suite does):
key of the returned mapping -> file name.  Without the cascade the standard table is in result.json and
report.md only (result.csv has every row it is made of)."""

CSV_COLUMNS = [
    "attack", "eps", "norm", "kind", "robust_accuracy", "worst_case_accuracy",
    "mean_l2", "mean_linf", "mean_nuclear", "seconds", "attack_repr",
]
"""Columns of result.csv (one row per attack × ε; empty cell for ``None``, e.g. an attack of unknown norm)."""

SUMMARY_COLUMNS = {
    "attack": "attack",
    "eps": "ε",
    "norm": "norm",
    "robust_accuracy": "robust acc",
    "worst_case_accuracy": "worst case",
    "mean_l2": "mean ‖δ‖₂",
    "mean_linf": "mean ‖δ‖∞",
    "mean_nuclear": "mean ‖δ‖_*",
    "seconds": "seconds",
}
"""Columns (key -> header) of the summary table of report.md; also usable with ``format_table``."""

STANDARD_COLUMNS = {
    "eps": "ε",
    "norm": "norm",
    "n": "n",
    "clean_accuracy": "clean acc",
    "robust_accuracy": "robust acc",
    "attacks": "attacks",
    "seconds": "seconds",
}
"""Columns (key -> header) of the standard evaluation, RobustBench's form: one row per (ε, norm), the robust
accuracy the worst case over the attacks run (:meth:`~robustlr.evaluate.EvaluationResult.standard_rows`); the keys
are the columns of standard.csv."""

STAGE_COLUMNS = {
    "eps": "ε",
    "norm": "norm",
    "stage": "stage",
    "attack": "attack",
    "attacked": "points attacked",
    "robust_accuracy": "robust acc after",
    "seconds": "seconds",
}
"""Columns (key -> header) of the cascade's stages (:meth:`~robustlr.evaluate.EvaluationResult.stage_rows`); the keys
are the columns of stages.csv."""


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    *,
    title: str = "robustlr report",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report of ``result`` into ``out_dir`` (created if needed); return ``{kind: path}``.

    Files (see :data:`FILES`): ``result.json`` (``result.to_dict()`` under ``"result"``, with the robustlr and
    torch versions, the device, a UTC timestamp, ``title`` and ``extra``; the standard evaluation is its
    ``"standard"``, the cascade's stages its ``"stages"``), ``result.csv`` (one row per attack × ε,
    :data:`CSV_COLUMNS`), ``report.md`` (standard evaluation, the cascade's stages if it ran, summary table, worst
    cases, warnings, notes, attack settings, the figure linked relatively) and ``robust_accuracy.png``; with the
    cascade also ``standard.csv`` (:data:`STANDARD_COLUMNS`) and ``stages.csv`` (:data:`STAGE_COLUMNS`), see
    :data:`CASCADE_FILES`.  Each file is written atomically.

    Raises:
        ValueError: if ``result`` is not an ``EvaluationResult``, ``title`` is not a string, or ``extra`` is
            not a JSON-serialisable dict with string keys.
    """
    if not isinstance(result, EvaluationResult):
        raise ValueError(f"result must be an EvaluationResult (from robustlr.evaluate), got {type(result).__name__}")
    if not isinstance(title, str):
        raise ValueError(f"title must be a string, got {title!r}")
    document = {
        "title": title,
        "robustlr_version": __version__,
        "torch_version": torch.__version__,
        "device": result.device,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": _check_extra(extra),
        "result": result.to_dict(),
    }
    out = Path(out_dir)
    paths = {key: out / name for key, name in FILES.items()}
    plot_robust_accuracy(result, paths["robust_accuracy"], title=f"{title}: robust accuracy vs ε")
    atomic_write_text(paths["json"], json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(paths["csv"], _csv(result.rows(), CSV_COLUMNS))
    atomic_write_text(paths["markdown"], _markdown(result, document))
    if result.cascade:
        for key, rows, columns in (("standard", result.standard_rows(), STANDARD_COLUMNS),
                                   ("stages", result.stage_rows(), STAGE_COLUMNS)):
            paths[key] = atomic_write_text(out / CASCADE_FILES[key], _csv(rows, list(columns)))
    return paths


def _check_extra(extra: dict[str, Any] | None) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise ValueError(f"extra must be a dict with string keys or None, got {extra!r}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"extra must be JSON-serialisable (finite numbers, strings, lists, dicts): {err}") from err
    return extra


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV text of ``rows`` in ``columns`` (other keys left out; an empty cell for ``None``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _markdown(result: EvaluationResult, document: dict[str, Any]) -> str:
    worst = [{"eps": w.eps, "norm": w.norm, "robust_accuracy": w.robust_accuracy, "attacks": ", ".join(w.attacks)}
             for w in result.worst_case]
    if result.worst_case_fixed is not None:
        fixed = result.worst_case_fixed
        worst.append({"eps": "own ε", "norm": fixed.norm, "robust_accuracy": fixed.robust_accuracy,
                      "attacks": ", ".join(fixed.attacks)})
    settings = [{"attack": r.attack, "eps": r.eps, "norm": r.norm, "settings": f"`{r.attack_repr}`"}
                for r in result.attacks]
    standard = [
        "## Standard evaluation\n",
        "Robust accuracy is the worst case per sample over the attacks run at each ε (RobustBench's form); "
        "seconds are the time spent in those attacks.\n",
        markdown_table(result.standard_rows(), STANDARD_COLUMNS),
    ]
    if result.cascade:
        standard += [
            "### Cascade\n",
            "The attacks of each (ε, norm) ran in this order, each on the points still robust before it (clean-"
            "correct and unbroken so far); a speed option, the worst case is the same as attacking every point "
            "with every attack.\n",
            markdown_table(result.stage_rows(), STAGE_COLUMNS),
        ]
    parts = [
        f"# {document['title']}\n",
        f"- samples: {result.n}\n- clean accuracy: {format_cell(result.clean_accuracy)}\n"
        f"- device: {result.device}\n- robustlr {document['robustlr_version']}, torch {document['torch_version']}, "
        f"{document['timestamp']}\n- evaluation time: {result.seconds:.1f} s\n",
        *standard,
        "## Robust accuracy\n",
        "A sample is robust if it is classified correctly both clean and under the attack; the worst case at ε "
        "counts a sample as robust only if it survives every attack of the same norm evaluated at ε (L2 and L∞ "
        "budgets are never merged; — is an attack that declares no norm). Norms are means of "
        "δ = x_adv − x over all samples (nuclear norm summed over channels)."
        + (" In the cascade an attack's robust accuracy is its group's after it, and its norms are means over the "
           "points it attacked." if result.cascade else "") + "\n",
        markdown_table(result.rows(), SUMMARY_COLUMNS),
        "## Worst case\n",
        markdown_table(worst, {"eps": "ε", "norm": "norm", "robust_accuracy": "robust acc", "attacks": "attacks"}),
        f"![Robust accuracy vs ε]({FILES['robust_accuracy']})\n",
        "## Warnings\n",
        "".join(f"- {w}\n" for w in result.warnings) if result.warnings else "None: every sanity check passed.\n",
        *(["## Notes\n", "".join(f"- {note}\n" for note in result.notes)] if result.notes else []),
        "## Attack settings\n",
        markdown_table(settings, ["attack", "eps", "norm", "settings"]),
    ]
    if document["extra"]:
        parts += ["## Extra\n", markdown_table([{"key": k, "value": v} for k, v in document["extra"].items()],
                                                ["key", "value"])]
    return "\n".join(parts)
