"""``robustlr demo``: train dense, low-rank and CondLR LeNet5 on real Fashion-MNIST, attack them, write the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..demo import DemoSettings, run_demo
from ..demo.report import SUMMARY, comparison_rows, summary_rows
from ..report import format_table
from .options import add_run_options

__all__ = ["CONTINUE_HINT", "register"]

CONTINUE_HINT = ("run the same command again: finished networks are reused and an interrupted one resumes "
                 "where it stopped")
"""What the command line prints after an interrupted demo (``continue_hint``, printed by ``robustlr.cli.main``)."""


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings.quick(args.seed, args.device) if args.quick else DemoSettings(seed=args.seed, device=args.device)
    out = Path(args.out) if args.out else Path("runs") / "demo"
    t0 = time.perf_counter()
    result = run_demo(settings, out, data_root=args.data_root, download=not args.no_download,
                      progress=not args.no_progress)
    summary = summary_rows(result)
    print(f"\nLeNet5 on Fashion-MNIST, {settings.epochs} epoch(s) each; robust accuracy on {settings.n_test} test images "
          f"at ε∞ = {settings.summary_linf:g} (FGSM, PGD-L∞) and ε₂ = {settings.summary_l2:g} (PGD-L2, LoRa-PGD):")
    print(format_table(summary, {**SUMMARY, **{k: k for k in summary[0] if k not in SUMMARY}}))
    for name, message in result.failed.items():
        print(f"{name} diverged and is left out: {message}")
    comparisons = comparison_rows(summary)
    if comparisons:
        print("\ndifferences in accuracy points (one seed: a point or two is noise):")
        print(format_table(comparisons, list(comparisons[0])))
    print(f"\nreport written to {out}/report.md in {time.perf_counter() - t0:.0f} s; trained models in {out}/<model>/last.pt "
          f"(attack them further with: robustlr evaluate --checkpoint {out}/condlr/last.pt)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = ("train dense, low-rank and CondLR LeNet5 on Fashion-MNIST, attack each with FGSM, PGD and LoRa-PGD, "
            "and write a report (minutes on CPU; resumable; gets Fashion-MNIST if it is missing)")
    p = sub.add_parser("demo", help=text, description=text)
    p.add_argument("--quick", action="store_true", help="a sub-minute version (1 epoch on 6000 images, 200 test images)")
    p.add_argument("--data-root", metavar="DIR",
                   help="the only directory looked in for Fashion-MNIST (default: found in $ROBUSTLR_DATA, "
                        "~/.cache/robustlr or /usr/share/datasets, else installed with apt-get as root on Debian, "
                        "else downloaded and checksum-verified)")
    p.add_argument("--no-download", action="store_true",
                   help="never download Fashion-MNIST when it is missing (the Debian package is still installed as root)")
    add_run_options(p, "demo", out_default="runs/demo; a rerun reuses its finished networks")
    p.set_defaults(handler=run, continue_hint=CONTINUE_HINT)
