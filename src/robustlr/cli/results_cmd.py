"""``robustlr results``: regenerate docs/results.md from the experiments' JSON tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..reproduce import experiments_dir
from ..reproduce.results import write_results

__all__ = ["CONTINUE_HINT", "register"]

CONTINUE_HINT = "rerun the command"
"""How to continue an interrupted ``robustlr results`` (printed by ``robustlr.cli.main``)."""


def run(args: argparse.Namespace) -> int:
    path = write_results(Path(args.runs), Path(args.out), Path(args.notes))
    print(f"written {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "regenerate docs/results.md from runs/reproduce/*/table.json (tables, devices, run times, figures)"
    p = sub.add_parser("results", help=text, description=text)
    p.add_argument("--runs", default="runs/reproduce", help="where reproduce wrote its experiments (default: %(default)s)")
    p.add_argument("--out", default="docs/results.md", help="the Markdown file to write (default: %(default)s)")
    p.add_argument("--notes", default=str(experiments_dir() / "notes"),
                   help="directory of per-experiment notes appended to their sections (default: experiments/notes)")
    p.set_defaults(handler=run, continue_hint=CONTINUE_HINT)
