"""``robustlr reproduce NAME``: run a versioned experiment of ``experiments/`` and write its table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import format_table
from ..reproduce import available, reproduce

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    doc = reproduce(args.name, Path(args.out) if args.out else None, smallest=args.smallest, only=args.only,
                    progress=not args.no_progress)
    rows = doc["rows"]
    if rows:
        print(format_table(rows, list(dict.fromkeys(k for row in rows for k in row))))
    print(f"\n{len(rows)}/{doc['runs_expected']} runs finished; table in "
          f"{args.out or 'runs/reproduce/' + args.name + ('-smallest' if args.smallest else '')}/table.md")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "reproduce a paper's experiment from experiments/NAME.toml (resumable: finished runs are skipped)"
    p = sub.add_parser("reproduce", help=text, description=text)
    p.add_argument("name", help=f"experiment: {', '.join(available())}")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/reproduce/NAME)")
    p.add_argument("--smallest", action="store_true", help="the quickest variant of every run (for a smoke test)")
    p.add_argument("--only", action="append", metavar="RUN_ID", help="run only these runs (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run)
