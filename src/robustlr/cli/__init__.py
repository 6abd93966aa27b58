"""The ``robustlr`` command line: ``robustlr COMMAND --help`` describes each command.

Errors in the arguments (also in a ``--config`` file), missing data and bad files end with a one-line message
``robustlr: error: ...`` and exit code 2. Ctrl-C (or SIGTERM, once training has saved its state) ends with one
line ``robustlr: interrupted (...); to continue: ...`` and exit code 128 + the signal's number (130 for Ctrl-C);
how to continue is each command's ``continue_hint`` default (``p.set_defaults(continue_hint=...)`` in its
``register``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TextIO

from .. import __version__
from . import compress_cmd, demo_cmd, evaluate_cmd, export_cmd, reproduce_cmd, results_cmd, spectrum_cmd, train_cmd
from ..train import TrainingInterrupted
from .options import Parser, apply_config, interruption

__all__ = ["main", "build_parser"]

_COMMANDS = (demo_cmd, evaluate_cmd, spectrum_cmd, train_cmd, reproduce_cmd, results_cmd, export_cmd, compress_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="robustlr",
        description="Low-rank adversarial attacks (LoRa-PGD) and robust low-rank training (CondLR).",
        epilog="Run 'robustlr COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"robustlr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings on the command line: one line on stderr, ``robustlr: <category>: <message>`` (no source line)."""
    print(f"robustlr: {category.__name__}: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 usage or data error, 130 interrupted by Ctrl-C,
    128 + N stopped by signal N)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args: argparse.Namespace | None = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = apply_config(parser, argv)
            return args.handler(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        message = " ".join(str(exc).split("\n")[0].split()) if not isinstance(exc, FileNotFoundError) else str(exc)
        print(f"robustlr: error: {message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainingInterrupted) as stop:
        line, code = interruption(stop, getattr(args, "continue_hint", None))
        print(line, file=sys.stderr)
        return code
