"""``robustlr compress``: a trained dense network (``--checkpoint``) → a robust low-rank one, fine-tuned with
CondLR, measured before and after (:mod:`robustlr.compress`).

The options that mean what they mean in ``robustlr train`` (optimisation, ``--tau``, adversarial training, the
training subset and validation split) are train's own option objects, with the same names, types, checks and
help (:func:`_borrow`); the data options are evaluate's. Exit codes: 0 done, 2 bad options, data or files, a
refused resume, 128 + signal number after SIGINT/SIGTERM (the state is saved first; ``robustlr.cli.main`` prints
how to continue).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..attacks import ATTACK_NAMES
from ..compress import compress
from ..compress.pipeline import check_run_dir
from ..compress.result import LAYER_COLUMNS
from ..compress.settings import CompressSettings, FINETUNE_DEFAULTS, parse_rank_request
from ..report import format_table
from ..train import TrainConfig
from ..train.method_options import CLI_NAMES
from . import train_cmd
from .options import (CliError, Parser, _Collect, add_data_options, add_model_options, add_run_options, checked,
                      default_out, integer, parse_floats, rank_value, unit_interval)
from .setup import check_model_fits, cli_names, device_of, load_data, load_model

__all__ = ["continue_hint", "register"]

_DEFAULTS = CompressSettings(params=1.0)

_FINETUNE = "fine-tuning (CondLR from the truncated SVDs of the trained weights)"

_TRAIN_OPTIONS = {
    "data": ("train_subset", "val_fraction", "augment"),
    _FINETUNE: (
        "epochs", "lr", "momentum", "weight_decay", "batch_size", "tau", "amp"),
    "adversarial fine-tuning (off unless --adv is given)": (
        "adv", "adv_norm", "adv_eps", "adv_steps", "adv_alpha", "adv_rank", "adv_fraction", "adv_bn", "adv_warm_start",
        "select_by", "robust_val_n"),
}
"""Group title -> the ``robustlr train`` options compress takes as they are (``None`` values are not passed)."""

_DATA_OPTIONS = ("data", "data_root", "image_size", "workers", "download")
"""The data options compress takes from ``robustlr evaluate``'s (its ``--split``, ``--n`` do not apply)."""

_OWN_TRAIN_KEYS = ("epochs", "lr", "tau", "adv")
"""Borrowed options that are compress settings, not ``train_options``."""

_SETTING_OPTIONS = {"rank": "--rank", "params": "--params", "keep_last_full": "--factorise-classifier",
                    "force": "--force", "attacks": "--attack", "eps": "--eps", "eval_n": "--eval-n",
                    "eval_steps": "--eval-steps",
                    "attack_rank": "--attack-rank", "eval_batch_size": "--eval-batch-size",
                    "latency_batch": "--latency-batch", "latency_repeats": "--latency-repeats", "seed": "--seed",
                    "device": "--device"}
"""Compress setting -> its option, for errors the library raises once the model and data are known."""


def continue_hint(out: str | None) -> str:
    """How to continue an interrupted compression in ``out`` (``None``: the directory was given with ``--out``)."""
    return "run the same command with --resume" if out is None else f"run the same command with --out {out} --resume"


def _rank_text(text: str) -> str:
    """``--rank``: the text, if :func:`robustlr.compress.settings.parse_rank_request` accepts it."""
    parse_rank_request(text)
    return text


def run(args: argparse.Namespace) -> int:
    """Check the options, the output directory, the checkpoint, the data and the model, then compress and print
    the before/after table and the layer table."""
    device_of(args)
    if (args.rank is None) == (args.params is None):
        raise CliError("give exactly one of --rank (an int, a fraction, NAME=RANK pairs or energy:E) and --params (a "
                       f"fraction in (0, 1] of the dense weights); got --rank {args.rank} --params {args.params}")
    if not args.checkpoint:
        raise CliError("--checkpoint PATH is required: the trained dense weights (a checkpoint of robustlr train, or "
                       "a state dict of --model/--model-file)")
    if not args.out:
        if args.resume:
            raise CliError("--resume needs --out DIR, the directory of the compression to continue")
        args.out = str(default_out("compress"))
        args.continue_hint = continue_hint(args.out)
    with cli_names({"out": "--out"}):
        check_run_dir(args.out, args.resume)
    train, test = load_data(args, "train"), load_data(args, "test")
    model = load_model(args, test)
    check_model_fits(model, test, args)
    train_options = {key: getattr(args, key) for keys in _TRAIN_OPTIONS.values() for key in keys
                     if key not in _OWN_TRAIN_KEYS and getattr(args, key) is not None}
    settings = {
        "rank": args.rank, "params": args.params, "keep_last_full": not args.factorise_classifier, "force": args.force,
        "epochs": args.epochs, "tau": args.tau, "lr": args.lr, "adv": args.adv, "attacks": args.attack or ["pgd-linf"],
        "eps": args.eps, "eval_n": args.eval_n, "eval_steps": args.eval_steps, "attack_rank": args.attack_rank,
        "eval_batch_size": args.eval_batch_size, "latency_batch": args.latency_batch,
        "latency_repeats": args.latency_repeats, "seed": args.seed, "device": args.device,
        "train_options": {**train_options, "grad_scale": args.grad_scale},
    }
    renames = {**{f.name: CLI_NAMES.key(f.name) for f in fields(TrainConfig)}, **_SETTING_OPTIONS}
    with cli_names(renames):
        result = compress(model, train, test, out=args.out, resume=args.resume, progress=not args.no_progress,
                          **settings)
    print(f"\n{result.choice.rule}: {result.choice.stored} of {result.choice.dense_weights} weights stored "
          f"({100 * result.saved_fraction:.1f} % saved); latency ratio low-rank / dense {result.latency['ratio']:.3f}")
    print(format_table(result.rows(), result.columns()))
    print(format_table(result.layer_rows(), LAYER_COLUMNS))
    print(f"compression written to {result.out} (compression.md, compression.json, compression.csv, layers.csv, "
          "model.pt; the fine-tuning run in finetune/)")
    return 0


def _borrow(group: argparse._ArgumentGroup, source: argparse.ArgumentParser, dests: tuple[str, ...]) -> None:
    """Add the option actions of ``source`` with these ``dest`` names to ``group``, unchanged (what argparse's
    ``parents=`` does for whole parsers): one definition of an option, shared by the commands that take it."""
    actions = {action.dest: action for action in source._actions}
    for dest in dests:
        group._add_action(actions[dest])


def _sources() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Fresh parsers of ``robustlr train`` and of an evaluating command's data options, to borrow from."""
    train = Parser(prog="robustlr")
    train_cmd.register(train.add_subparsers())
    data = Parser(prog="robustlr")
    add_data_options(data)
    return train._subparsers._group_actions[0].choices["train"], data  # type: ignore[union-attr]


def register(sub: argparse._SubParsersAction) -> None:
    text = ("compress a trained dense network into a robust low-rank one: ranks from the trained weights, CondLR "
            "fine-tuning (optionally adversarial), clean and robust accuracy, kappa, weights and latency before/after")
    p = sub.add_parser("compress", help=text, description=text)
    train, data = _sources()
    add_model_options(p)
    g = p.add_argument_group("ranks")
    g.add_argument("--rank", type=checked(_rank_text, "rank", convert=str, label="rank"), default=None,
                   help="an int, a fraction of min(n, m) in (0, 1], NAME=RANK pairs (unnamed layers stay dense), or "
                        "energy:E (per layer the smallest rank keeping E of the sum of squared singular values)")
    g.add_argument("--params", type=unit_interval(low_open=True, reason="of the dense weights"), default=None,
                   metavar="F", help="store at most this fraction of the Linear/Conv2d weights, ranks spread by energy")
    g.add_argument("--factorise-classifier", action="store_true",
                   help="choose the classifier's rank like any other layer's (default: it stays full rank, i.e. dense)")
    g.add_argument("--force", action="store_true",
                   help="factorise also layers whose r(n+m)+r^2 is at least n*m (default: they stay dense)")
    groups = {title: p.add_argument_group(title) for title in _TRAIN_OPTIONS}
    _borrow(groups["data"], data, _DATA_OPTIONS)
    for title, dests in _TRAIN_OPTIONS.items():
        _borrow(groups[title], train, dests)
    groups[_FINETUNE].add_argument(
        "--grad-scale", default=FINETUNE_DEFAULTS["grad_scale"], choices=["reference", "exact"],
        help="U/V gradient scale, the exact (S S^T)^-1 or the reference code's (sigma_min/sigma_max)^2 (default: "
             "%(default)s)")
    g = p.add_argument_group("evaluation (the same attacks on the dense and the low-rank model)")
    g.add_argument("--attack", action=_Collect, choices=ATTACK_NAMES, default=None,
                   help="repeatable (default: pgd-linf)")
    g.add_argument("--eps", type=parse_floats, nargs="+", action=_Collect, default=None,
                   help="budgets (commas or spaces; 0 is always added; default: 0.05 L-inf on one-channel images, "
                        "2/255 on colour ones, 0.5 for L2 attacks)")
    g.add_argument("--eval-n", type=integer(0, "0 = all"), default=_DEFAULTS.eval_n,
                   help="test images, 0 = all (default: %(default)s)")
    g.add_argument("--eval-steps", type=integer(1), default=None,
                   help="attack steps, also of the robust validation with --adv (default: each attack's own, 10 for "
                        "PGD)")
    g.add_argument("--attack-rank", type=rank_value, default=None, metavar="R",
                   help="rank of the low-rank attacks (lora-pgd, lora-apgd, rank-pgd): an int or a fraction of min(H, W)")
    g.add_argument("--eval-batch-size", type=integer(1), default=_DEFAULTS.eval_batch_size,
                   help="default: %(default)s")
    g.add_argument("--latency-batch", type=integer(1), default=_DEFAULTS.latency_batch,
                   help="test images per timed forward pass (default: %(default)s)")
    g.add_argument("--latency-repeats", type=integer(1), default=_DEFAULTS.latency_repeats,
                   help="timed forward passes of each model; the median is kept (default: %(default)s)")
    add_run_options(p, "compress")
    p.add_argument("--resume", action="store_true",
                   help="continue the compression in --out; the options must be the stored ones except --epochs "
                        "(more) and --device")
    p.set_defaults(handler=run, continue_hint=continue_hint(None), epochs=_DEFAULTS.epochs, lr=_DEFAULTS.lr,
                   tau=_DEFAULTS.tau, momentum=FINETUNE_DEFAULTS["momentum"])
