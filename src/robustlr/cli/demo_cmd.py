"""``robustlr demo``: train LeNet5 on real Fashion-MNIST, attack it, print and write the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..attacks import FGSM, PGD, LoRaPGD, RankProjectedPGD
from ..data import load_dataset
from ..evaluate import evaluate
from ..models import create, save_checkpoint
from ..report import format_table, write_report
from ..train.quick import accuracy, fit
from .options import add_run_options

__all__ = ["register"]

COLUMNS = {"attack": "attack", "eps": "ε", "robust_accuracy": "robust acc", "mean_l2": "mean ‖δ‖₂",
           "mean_linf": "mean ‖δ‖∞", "mean_nuclear": "mean ‖δ‖_*", "seconds": "seconds"}
EPS_LINF, EPS_L2 = 0.1, 1.0


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    train = load_dataset("fashion-mnist", "train", root=args.data_root)
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    n_train, n_test = (6000, 200) if args.quick else (len(train), 1000)
    t0 = time.perf_counter()
    model = create("lenet5", num_classes=10)
    fit(model, train.images[:n_train], train.labels[:n_train], epochs=1, lr=0.05, momentum=0.9,
        batch_size=128, seed=args.seed, progress=progress)
    print(f"trained LeNet5 on {n_train} Fashion-MNIST images for 1 epoch in {time.perf_counter() - t0:.1f} s; "
          f"test accuracy {accuracy(model, test.images, test.labels):.4f}")
    attacks = {
        "fgsm": FGSM(model, EPS_LINF),
        "pgd-linf": PGD(model, EPS_LINF, "linf", seed=args.seed),
        "pgd-l2": PGD(model, EPS_L2, "l2", seed=args.seed),
        "rank-pgd r=0.1": RankProjectedPGD(model, EPS_L2, rank=0.1, seed=args.seed),
    }
    for frac in (0.1, 0.2, 0.3, 0.4, 0.5):
        attacks[f"lora-pgd r={round(frac * 28)}"] = LoRaPGD(model, EPS_L2, rank=frac, seed=args.seed)
    result = evaluate(model, (test.images[:n_test], test.labels[:n_test]), attacks, progress=progress)
    out = Path(args.out) if args.out else Path("runs") / "demo"
    save_checkpoint(out / "lenet5.pt", model, {"data": "fashion-mnist", "train_images": n_train, "epochs": 1,
                                               "test_accuracy": result.clean_accuracy})
    write_report(result, out, title="robustlr demo: LeNet5 on Fashion-MNIST",
                 extra={"train_images": n_train, "epochs": 1, "quick": args.quick})
    print(f"\nclean accuracy {result.clean_accuracy:.4f} on n = {result.n} test images; "
          f"L∞ attacks at ε = {EPS_LINF}, L2 attacks at ε = {EPS_L2}")
    print(format_table(result.rows(), COLUMNS))
    print(f"\nreport written to {out}/report.md; model saved to {out}/lenet5.pt "
          f"(attack it further with: robustlr evaluate --checkpoint {out}/lenet5.pt)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "train LeNet5 on Fashion-MNIST and compare FGSM, PGD and LoRa-PGD on it (offline, minutes on CPU)"
    p = sub.add_parser("demo", help=text, description=text)
    p.add_argument("--quick", action="store_true", help="a sub-minute version (6000 training, 200 test images)")
    p.add_argument("--data-root", metavar="DIR", help="directory holding Fashion-MNIST (default: discovered)")
    add_run_options(p, "demo")
    p.set_defaults(handler=run)
