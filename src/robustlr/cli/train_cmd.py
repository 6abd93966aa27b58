"""``robustlr train``: dense / vanilla low-rank / CondLR / orthogonal training, optionally adversarial, in one
process or distributed, with exact resume.

Defaults are the CondLR paper's LeNet5 protocol (see :mod:`robustlr.train.config`); adversarial training is off
unless ``--adv`` names the inner attack (:mod:`robustlr.train.adv_config`). ``--nproc N`` runs N processes of a
DDP group on this machine (:mod:`robustlr.train.launch`); ``torchrun --nproc_per_node N -m robustlr train ...``
does the same through torchrun. Exit codes: 0 done, 2 bad options or data, a diverged loss or a refused resume,
1 replicas that diverged or a worker that crashed, 128 + signal number after SIGINT/SIGTERM (the resumable state
is saved first; ``robustlr.cli.main`` prints how to continue, :func:`continue_hint`).

Every option's value is checked under its option's name while the command line is parsed (types of
:mod:`robustlr.cli.options`, bounds of :class:`~robustlr.train.TrainConfig`); what depends on several options
(``--theta`` with ``--method``, the ``--adv-*`` options with ``--adv``) is checked by ``TrainConfig``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
import sys

from ..attacks.projections import NORMS
from ..lowrank.adaptive import validate_theta
from ..lowrank.manifold import validate_tau
from ..report import SUMMARY_COLUMNS, format_table
from ..train import (
    ADV_ATTACKS,
    AMP_MODES,
    METHODS,
    RESUME_MAY_DIFFER,
    ReplicaDivergenceError,
    TrainConfig,
    TrainingInterrupted,
    launch,
    train,
)
from ..train.method_options import CLI_NAMES, METHOD_DEFAULTS
from ..train.adv_config import ADV_BN_MODES, DEFAULT_ADV_EPS, SELECTIONS
from ..train.config import parse_rank
from ..train.distributed import is_main_process
from ..train.metrics_log import CSV_COLUMNS
from .setup import cli_names
from .options import (CliError, add_run_options, checked, default_out, integer, interruption, number, rank_value,
                      unit_interval)

__all__ = ["continue_hint", "register"]

_DEFAULTS = TrainConfig()
_OPTION_NAMES = {f.name: CLI_NAMES.key(f.name) for f in fields(TrainConfig)}
"""Config field -> its option, for errors the library raises once the data is known."""
_EPOCH_COLUMNS = [column for column in CSV_COLUMNS if column != "ranks"]


def _train_and_report(config: TrainConfig, progress: bool, resume: bool) -> int:
    """Train; rank 0 prints the last epoch and both evaluations. Returns the exit code."""
    try:
        with cli_names(_OPTION_NAMES):  # "train_subset must be ..." (checked against the data) -> --train-subset
            result = train(config, progress=progress, resume=resume)
    except TrainingInterrupted as stop:
        if is_main_process():
            raise  # reported once, with how to continue, by robustlr.cli.main (or _train_worker)
        return 128 + stop.signum
    except ReplicaDivergenceError as error:
        print(f"robustlr: error: {error}", file=sys.stderr)
        return 1
    if not is_main_process():
        return 0
    selected = "robust accuracy under the evaluation attack" if config.select_by == "robust" else "accuracy"
    print(f"\n{config.method} {config.model} on {config.data}: {len(result.history)} epochs; best validation "
          f"{selected} {result.best_val_accuracy:.4f} at epoch {result.best_epoch}")
    adversarial = result.summary["adversarial"]
    if adversarial is not None:
        print(f"training attack: {adversarial['train_attack']} on a fraction {adversarial['fraction']:g} of each batch, "
              f"{adversarial['adv_seconds_per_epoch']:.1f} s per epoch; evaluation attack: {adversarial['eval_attack']}")
        if "adv_bank_bytes" in adversarial:
            print(f"warm-start bank: {adversarial['adv_bank_bytes']} bytes (a full bank: "
                  f"{adversarial['adv_bank_full_bytes']} bytes)")
    print(format_table(result.history[-1:], _EPOCH_COLUMNS))
    for which, evaluation in result.evaluation.items():
        print(f"\n{which} model: clean test accuracy {evaluation.clean_accuracy:.4f} on n = {evaluation.n}")
        print(format_table(evaluation.rows(), SUMMARY_COLUMNS))
    print(f"\nrun written to {result.paths.out}")
    return 0


def _train_worker(config: TrainConfig, progress: bool, resume: bool, hint: str) -> int:
    """:func:`_train_and_report` in a process started by ``--nproc``: errors become one line and exit code 2, a
    stop the line of :func:`robustlr.cli.options.interruption` (from rank 0) and 128 + the signal's number."""
    try:
        return _train_and_report(config, progress, resume)
    except (KeyboardInterrupt, TrainingInterrupted) as stop:
        line, code = interruption(stop, hint)
        if is_main_process():
            print(line, file=sys.stderr)
        return code
    except (ValueError, OSError) as error:
        rank = os.environ.get("RANK", "0")
        where = "" if rank == "0" else f" (rank {rank})"
        print(f"robustlr: error{where}: {' '.join(str(error).splitlines()[0].split())}", file=sys.stderr)
        return 2


def continue_hint(out: str | None) -> str:
    """How to continue an interrupted run in ``out`` (``None``: the run directory was given with ``--out``)."""
    return "run the same command with --resume" if out is None else f"run the same command with --out {out} --resume"


def run(args: argparse.Namespace) -> int:
    """Train as the options say (in ``--nproc`` processes), print the results; return the exit code."""
    if not args.out:
        if args.resume:
            raise CliError("--resume needs --out DIR, the directory of the run to continue")
        args.out = str(default_out("train"))
        args.continue_hint = continue_hint(args.out)  # the new run's directory is needed to resume it
    config = TrainConfig.from_args(args)
    if args.nproc == 1:
        return _train_and_report(config, not args.no_progress, args.resume)
    if int(os.environ.get("WORLD_SIZE", "1") or "1") > 1:
        raise CliError(f"--nproc must be 1 inside torchrun, which has started the processes already; got {args.nproc}")
    return launch(args.nproc, _train_worker, config, not args.no_progress, args.resume, args.continue_hint)


def _rank_text(text: str) -> str:
    """``--rank``: the text, if :func:`robustlr.train.config.parse_rank` accepts it."""
    parse_rank(text)
    return text


def register(sub: argparse._SubParsersAction) -> None:
    text = ("train a dense, low-rank, CondLR or orthogonal network, optionally adversarially and on several processes; "
            "checkpoints, metrics, exact resume, final evaluation")
    p = sub.add_parser("train", help=text, description=text,
                       epilog="methods: " + "; ".join(f"{name}: {what}" for name, what in METHODS.items()))
    g = p.add_argument_group("model and method")
    g.add_argument("--model", default=_DEFAULTS.model, help="model name from robustlr.models (default: %(default)s)")
    g.add_argument("--method", default=_DEFAULTS.method, choices=list(METHODS), help="default: %(default)s")
    g.add_argument("--rank", type=checked(_rank_text, "rank", convert=str, label="rank"), default=None,
                   help="lowrank/condlr: layer rank, an int, a fraction of min(n, m) in (0, 1], or NAME=RANK pairs "
                        "(comma separated; unnamed layers stay dense); the classifier stays full rank (default: "
                        f"{METHOD_DEFAULTS['rank']})")
    g.add_argument("--tau", type=checked(validate_tau, "tau"), default=None,
                   help=f"condlr: kappa(S) <= 1 + tau (default: {METHOD_DEFAULTS['tau']})")
    g.add_argument("--grad-scale", default=None, choices=["reference", "exact"],
                   help="condlr: U/V gradient scale, the reference code's (sigma_min/sigma_max)^2 or the exact "
                        f"(S S^T)^-1 (default: {METHOD_DEFAULTS['grad_scale']})")
    g.add_argument("--theta", type=checked(validate_theta, "theta"), metavar="THETA",
                   help="CondLR rank adaptivity: relative truncation tolerance in [0, 1) (default: fixed rank); "
                        "use with --grad-scale exact")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=_DEFAULTS.data, help="dataset name (default: %(default)s)")
    g.add_argument("--data-root", metavar="DIR", help="the only directory looked in for the dataset files (default: "
                                                     "$ROBUSTLR_DATA, ~/.cache/robustlr, /usr/share/datasets)")
    g.add_argument("--download", action="store_true", help="download (checksum-verified) if not found locally")
    g.add_argument("--image-size", type=integer(1), metavar="N",
                   help="--data folder: train on random-resized N×N crops (with --augment, else resize the shorter "
                        "side to round(N*256/224) and centre-crop N); default: images keep their size, which must be "
                        "the same for all")
    g.add_argument("--workers", type=integer(0, "0 = the main process"), metavar="N",
                   help="processes that decode batches in parallel (default: min(4, CPUs) for --data folder, 0 for "
                        "data held in memory); may change on --resume")
    g.add_argument("--train-subset", type=integer(2, "a validation split is held out"), metavar="N",
                   help="use only the first N training images (default: all)")
    g.add_argument("--val-fraction", default=_DEFAULTS.val_fraction,
                   type=unit_interval(True, True, "a validation set picks the best checkpoint"),
                   help="held-out validation fraction, seeded (default: %(default)s)")
    g.add_argument("--augment", action="store_true", help="random crop (padding 4) and horizontal flip")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=integer(1), default=_DEFAULTS.epochs, help="default: %(default)s")
    g.add_argument("--lr", type=number(0.0, strict=True), default=_DEFAULTS.lr, help="default: %(default)s")
    g.add_argument("--momentum", type=number(0.0), default=_DEFAULTS.momentum, help="default: %(default)s")
    g.add_argument("--weight-decay", type=number(0.0), default=_DEFAULTS.weight_decay, help="default: %(default)s")
    g.add_argument("--milestones", type=integer(1), nargs="*", default=list(_DEFAULTS.milestones),
                   help="MultiStepLR epochs (default: %(default)s)")
    g.add_argument("--gamma", type=number(0.0, strict=True), default=_DEFAULTS.gamma,
                   help="MultiStepLR factor (default: %(default)s)")
    g.add_argument("--batch-size", type=integer(1), default=_DEFAULTS.batch_size, help="default: %(default)s")
    g = p.add_argument_group("final evaluation (FGSM and PGD-Linf on the test split, last and best models)")
    g.add_argument("--eval-eps", type=number(0.0), nargs="+", default=list(_DEFAULTS.eval_eps),
                   help="Linf budgets (default: %(default)s)")
    g.add_argument("--eval-n", type=integer(0, "0 = all"), default=_DEFAULTS.eval_n,
                   help="test images, 0 = all (default: %(default)s)")
    g.add_argument("--eval-steps", type=integer(1), default=_DEFAULTS.eval_steps,
                   help="PGD steps (default: %(default)s)")
    g.add_argument("--eval-batch-size", type=integer(1), default=_DEFAULTS.eval_batch_size,
                   help="batch size of validation and evaluation (default: %(default)s)")
    g = p.add_argument_group("adversarial training (off unless --adv is given)")
    g.add_argument("--adv", metavar="ATTACK", choices=list(ADV_ATTACKS),
                   help="inner attack: " + "; ".join(f"{name}: {what}" for name, what in ADV_ATTACKS.items()))
    g.add_argument("--adv-norm", metavar="NORM", choices=list(NORMS), help="linf or l2 (default: linf)")
    g.add_argument("--adv-eps", type=number(0.0), metavar="EPS",
                   help=f"budget (default: {DEFAULT_ADV_EPS['linf']:g} for linf, {DEFAULT_ADV_EPS['l2']:g} for l2)")
    g.add_argument("--adv-steps", type=integer(1), metavar="K", help="attack steps (default: 10; fgsm: 1)")
    g.add_argument("--adv-alpha", type=number(0.0, strict=True), metavar="ALPHA",
                   help="step size of pgd/fgsm (default: pgd 2.5 eps/K (linf) or 1.8 eps/K (l2); fgsm 1.25 eps)")
    g.add_argument("--adv-rank", type=rank_value, metavar="R",
                   help="lora-pgd only: per-channel rank, an int or a fraction of min(H, W) (default: 0.1)")
    g.add_argument("--adv-fraction", type=unit_interval(reason="1 = Madry"), metavar="F",
                   help="share of each batch replaced by adversarial examples, in [0, 1] (default: 1, Madry)")
    g.add_argument("--adv-bn", metavar="MODE", choices=list(ADV_BN_MODES),
                   help=f"model mode while the attack is generated: {' or '.join(ADV_BN_MODES)} (default: eval; the "
                        "update always runs in train mode)")
    g.add_argument("--adv-warm-start", action="store_true",
                   help="start each sample's attack from its perturbation of the previous epoch (lora-pgd: stores "
                        "the rank-r factors, 2r/n of a full bank); not with --augment")
    g.add_argument("--select-by", metavar="WHAT", choices=list(SELECTIONS),
                   help=f"best checkpoint by {' or '.join(SELECTIONS)} validation accuracy (default: robust with "
                        "--adv, under PGD with --eval-steps steps at the adv budget; clean without)")
    g.add_argument("--robust-val-n", type=integer(0, "0 = all"), default=_DEFAULTS.robust_val_n, metavar="N",
                   help="validation images attacked after each epoch, 0 = all (default: %(default)s)")
    g = p.add_argument_group("distributed training and precision")
    g.add_argument("--nproc", type=integer(1), default=1, metavar="N",
                   help="processes of a DistributedDataParallel group on this machine (gloo on CPU, nccl on CUDA: "
                        "one GPU each); the global batch is --batch-size (default: %(default)s)")
    g.add_argument("--amp", metavar="DTYPE", choices=list(AMP_MODES),
                   help=f"autocast the training forward passes to {' or '.join(AMP_MODES)} (fp16 with a gradient "
                        "scaler); default: full precision")
    add_run_options(p, "train")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out from its resume.pt; the options must match the stored ones "
                        f"except {', '.join(RESUME_MAY_DIFFER)}")
    p.set_defaults(handler=run, continue_hint=continue_hint(None))
