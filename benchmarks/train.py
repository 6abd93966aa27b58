"""Training and inference benchmarks of low-rank models, as ratios measured side by side in one run.

  * CondLR epoch time / dense epoch time, LeNet5 at rank fraction 0.2 on Fashion-MNIST
    (same data, batch 128, lr 0.1, momentum 0.3)                                        goal ≤ 1.0
  * low-rank / dense inference latency, VGG16 at rank fraction 0.2 on CIFAR-shaped input goal ≤ 0.6
  * host round trips per training step (robustlr.profiling.HostSyncs), plain and PGD-adversarial, LeNet5 goal ≤ 1

Run:  python benchmarks/train.py [--device cuda] [--train-images 12000] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from common import device_name, interleaved_times

from robustlr.lowrank import CondLR, to_lowrank
from robustlr.models import create
from robustlr.profiling import HostSyncs
from robustlr.train import TrainConfig
from robustlr.train.adversarial import AdversarialTraining
from robustlr.train.distributed import Distributed
from robustlr.train.step import BatchContext, Stepper, identity


def epoch_fn(model, opt, x, y, batch):
    def run() -> None:
        model.train()
        for xb, yb in zip(x.split(batch), y.split(batch)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

    return run


def train_ratio(device: torch.device, n: int, batch: int, repeats: int) -> dict:
    from robustlr.data import load_dataset

    data = load_dataset("fashion-mnist", "train")
    x, y = data.images[:n].to(device), data.labels[:n].to(device)
    torch.manual_seed(0)
    dense = create("lenet5").to(device)
    low = to_lowrank(create("lenet5"), rank=0.2).to(device)
    fns = {
        "dense": epoch_fn(dense, torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.3), x, y, batch),
        "condlr": epoch_fn(low, CondLR(low, lr=0.1, momentum=0.3, tau=0.1), x, y, batch),
    }
    t = interleaved_times(fns, device, repeats)
    return {"dense_epoch_seconds": t["dense"], "condlr_epoch_seconds": t["condlr"],
            "condlr_vs_dense_epoch": t["condlr"] / t["dense"], "train_images": n}


def inference_ratio(device: torch.device, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    dense = create("vgg16", num_classes=10).to(device).eval()
    low = to_lowrank(create("vgg16", num_classes=10), rank=0.2).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)

    def infer(model):
        @torch.inference_mode()
        def run() -> None:
            model(x)
        return run

    t = interleaved_times({"dense": infer(dense), "lowrank": infer(low)}, device, repeats)
    return {"vgg16_dense_seconds": t["dense"], "vgg16_lowrank_seconds": t["lowrank"],
            "lowrank_vs_dense_inference": t["lowrank"] / t["dense"], "batch": batch}


def step_syncs(device: torch.device, steps: tuple[int, ...] = (1, 10)) -> dict:
    """Host round trips (:class:`robustlr.profiling.HostSyncs`) of ``k`` training steps (``Stepper`` calls, the
    trainer's step; the loss and accuracy stay on the device until the logging interval's ``settle``) of LeNet5
    with SGD on batches of 16, for each ``k`` of ``steps`` after one warm-up step: plain (``syncs_plain_<k>``) and
    adversarial with PGD-10 L∞ inside (``syncs_adv_<k>``); ``syncs_per_training_step`` is the largest count
    per step (goal ≤ 1)."""
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    context = BatchContext.whole(16, epoch=1)
    adversarial = AdversarialTraining(TrainConfig(adv="pgd", adv_steps=10, adv_eps=0.1), 16, (1, 28, 28),
                                      device, Distributed())
    rows: dict[str, float] = {}
    for name, transform in (("plain", identity), ("adv", adversarial)):
        model = create("lenet5").to(device)
        step = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), transform)
        step(x, y, context)
        for k in steps:
            with HostSyncs(data_sizes=False) as syncs:  # the adversarial rows come from host-side positions
                for _ in range(k):
                    step(x, y, context)
            rows[f"syncs_{name}_{k}"] = syncs.total
    rows["syncs_per_training_step"] = max(rows[f"syncs_{name}_{k}"] / k for name in ("plain", "adv") for k in steps)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    results = {"train": train_ratio(device, args.train_images, args.batch, args.repeats),
               "inference": inference_ratio(device, args.batch, args.repeats),
               "syncs": step_syncs(device)}
    for section, rows in results.items():
        print(f"\n[{section}]")
        for key, value in rows.items():
            print(f"  {key:30s} {value:.4g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(device), "torch": torch.__version__, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
