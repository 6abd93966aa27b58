"""``robustlr train``: dense / vanilla low-rank / CondLR / orthogonal training with exact resume.

Defaults are the CondLR paper's LeNet5 protocol (see :mod:`robustlr.train.config`). Exit codes: 0 done,
2 bad options or data, a diverged loss or a refused resume, 128 + signal number after SIGINT/SIGTERM (the
resumable state is saved first).
"""

from __future__ import annotations

import argparse
import sys

from ..report import SUMMARY_COLUMNS, format_table
from ..train import METHODS, RESUME_MAY_DIFFER, TrainConfig, TrainingInterrupted, train
from ..train.metrics_log import CSV_COLUMNS
from .options import CliError, add_run_options, default_out

__all__ = ["register"]

_DEFAULTS = TrainConfig()
_EPOCH_COLUMNS = [column for column in CSV_COLUMNS if column != "ranks"]


def run(args: argparse.Namespace) -> int:
    """Train as the options say, print the last epoch and both evaluations; return the exit code."""
    if not args.out:
        if args.resume:
            raise CliError("--resume needs --out DIR, the directory of the run to continue")
        args.out = str(default_out("train"))
    config = TrainConfig.from_args(args)
    try:
        result = train(config, progress=not args.no_progress, resume=args.resume)
    except TrainingInterrupted as stop:
        print(f"robustlr: {stop}", file=sys.stderr)
        return 128 + stop.signum
    print(f"\n{config.method} {config.model} on {config.data}: {len(result.history)} epochs; "
          f"best validation accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}")
    print(format_table(result.history[-1:], _EPOCH_COLUMNS))
    for which, evaluation in result.evaluation.items():
        print(f"\n{which} model: clean test accuracy {evaluation.clean_accuracy:.4f} on n = {evaluation.n}")
        print(format_table(evaluation.rows(), SUMMARY_COLUMNS))
    print(f"\nrun written to {result.paths.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "train a dense, low-rank, CondLR or orthogonal network; checkpoints, metrics, exact resume, final evaluation"
    p = sub.add_parser("train", help=text, description=text,
                       epilog="methods: " + "; ".join(f"{name}: {what}" for name, what in METHODS.items()))
    g = p.add_argument_group("model and method")
    g.add_argument("--model", default=_DEFAULTS.model, help="model name from robustlr.models (default: %(default)s)")
    g.add_argument("--method", default=_DEFAULTS.method, choices=list(METHODS), help="default: %(default)s")
    g.add_argument("--rank", default=str(_DEFAULTS.rank),
                   help="layer rank: an int, a fraction of min(n, m) in (0, 1], or NAME=RANK pairs (comma separated; "
                        "unnamed layers stay dense); the classifier stays full rank (default: %(default)s)")
    g.add_argument("--tau", type=float, default=_DEFAULTS.tau,
                   help="CondLR: kappa(S) <= 1 + tau (default: %(default)s)")
    g.add_argument("--grad-scale", default=_DEFAULTS.grad_scale, choices=["reference", "exact"],
                   help="CondLR U/V gradient scale: the reference code's (sigma_min/sigma_max)^2 or the exact "
                        "(S S^T)^-1 (default: %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=_DEFAULTS.data, help="dataset name (default: %(default)s)")
    g.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files (searched first)")
    g.add_argument("--download", action="store_true", help="download (checksum-verified) if not found locally")
    g.add_argument("--train-subset", type=int, metavar="N", help="use only the first N training images (default: all)")
    g.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                   help="held-out validation fraction, seeded (default: %(default)s)")
    g.add_argument("--augment", action="store_true", help="random crop (padding 4) and horizontal flip")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="default: %(default)s")
    g.add_argument("--momentum", type=float, default=_DEFAULTS.momentum, help="default: %(default)s")
    g.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay, help="default: %(default)s")
    g.add_argument("--milestones", type=int, nargs="*", default=list(_DEFAULTS.milestones),
                   help="MultiStepLR epochs (default: %(default)s)")
    g.add_argument("--gamma", type=float, default=_DEFAULTS.gamma, help="MultiStepLR factor (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="default: %(default)s")
    g = p.add_argument_group("final evaluation (FGSM and PGD-Linf on the test split, last and best models)")
    g.add_argument("--eval-eps", type=float, nargs="+", default=list(_DEFAULTS.eval_eps),
                   help="Linf budgets (default: %(default)s)")
    g.add_argument("--eval-n", type=int, default=_DEFAULTS.eval_n, help="test images, 0 = all (default: %(default)s)")
    g.add_argument("--eval-steps", type=int, default=_DEFAULTS.eval_steps, help="PGD steps (default: %(default)s)")
    g.add_argument("--eval-batch-size", type=int, default=_DEFAULTS.eval_batch_size,
                   help="batch size of validation and evaluation (default: %(default)s)")
    add_run_options(p, "train")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out from its resume.pt; the options must match the stored ones "
                        f"except {', '.join(RESUME_MAY_DIFFER)}")
    p.set_defaults(handler=run)
