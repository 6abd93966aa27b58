"""Reports of evaluations: JSON / CSV / Markdown files, matplotlib figures, aligned text tables.

``write_report`` writes everything for an :class:`~robustlr.evaluate.EvaluationResult`; the table and
figure helpers are also used on their own (by the CLI).  Every file is written atomically.
"""

from .figures import plot_bars, plot_energy_curves, plot_lines, plot_robust_accuracy, plot_spectrum_shift
from ..files import atomic_write_bytes, atomic_write_text
from .tables import format_table, markdown_table
from .writer import CASCADE_FILES, CSV_COLUMNS, FILES, STAGE_COLUMNS, STANDARD_COLUMNS, SUMMARY_COLUMNS, write_report

__all__ = [
    "write_report",
    "FILES",
    "CASCADE_FILES",
    "CSV_COLUMNS",
    "SUMMARY_COLUMNS",
    "STANDARD_COLUMNS",
    "STAGE_COLUMNS",
    "markdown_table",
    "format_table",
    "plot_robust_accuracy",
    "plot_spectrum_shift",
    "plot_energy_curves",
    "plot_lines",
    "plot_bars",
    "atomic_write_bytes",
    "atomic_write_text",
]
