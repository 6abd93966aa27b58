"""``robustlr reproduce NAME``: run a versioned experiment of ``experiments/`` and write its table.

Exit codes: 0 when every attempted unit finished (runs skipped for missing data are listed, not failures), 1 when
some run or cell failed (listed on stderr; the others went on), 130 when stopped by Ctrl-C (128 + N by signal N;
``robustlr.cli.main`` prints how to continue: :data:`CONTINUE_HINT`), 2 for a bad config or argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..report import format_table
from ..reproduce import available, reproduce
from ..reproduce.tables import table_columns

__all__ = ["CONTINUE_HINT", "register"]

CONTINUE_HINT = "rerun the same command: finished runs are kept"
"""How to continue an interrupted ``robustlr reproduce`` (printed by ``robustlr.cli.main``)."""


def run(args: argparse.Namespace) -> int:
    out = args.out or "runs/reproduce/" + args.name + ("-smallest" if args.smallest else "")
    doc = reproduce(args.name, Path(out), smallest=args.smallest, only=args.only, progress=not args.no_progress)
    rows = doc["rows"]
    if rows:
        print(format_table(rows, table_columns(rows)))
    runs = ", ".join(f"{n} {status}" for status, n in doc["runs"].items())
    print(f"\nruns of {doc['runs_expected']}: {runs}; table in {out}/table.md")
    for row in rows:
        if row.get("status") == "skipped":
            print(f"skipped: {row.get('model') or row.get('run')}: {row['error']}")
    failed = [row for row in rows if row.get("status") == "failed"]
    for row in failed:
        what = " / ".join(str(v) for k, v in row.items() if v is not None and k not in ("status", "error"))
        print(f"robustlr: failed: {what}: {row['error']}", file=sys.stderr)
    if failed:
        print(f"robustlr: {len(failed)} row(s) failed (tracebacks in the *status.json files under {out}); the others "
              "ran; rerun to retry the failed ones", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    text = ("reproduce a paper's experiment from experiments/NAME.toml (resumable: finished runs are skipped, "
            "failed runs are recorded and retried by the next invocation)")
    p = sub.add_parser("reproduce", help=text, description=text)
    p.add_argument("name", help=f"experiment: {', '.join(available())}")
    p.add_argument("--out", metavar="DIR",
                   help="output directory: new, empty, or this experiment's (default: runs/reproduce/NAME)")
    p.add_argument("--smallest", action="store_true", help="the quickest variant of every run (for a smoke test)")
    p.add_argument("--only", action="append", metavar="RUN_ID", help="run only these runs (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run, continue_hint=CONTINUE_HINT)
