"""CondLR optimizer step / SGD step on a WRN-16-4 CIFAR-shaped model at rank 0.2 (goal ≤ 1.5), the step only.

Gradients of one batch are present; ``optimizer.step()`` alone is timed, the optimisers interleaved
(:func:`common.interleaved_times`), medians. Denominators: SGD (same lr and momentum) on the dense WRN-16-4 the
low-rank model replaces (the ratio of the table), and SGD on the low-rank model itself. Also the batched linear
algebra (``CondLR(batched=True)``, the default on CUDA) against the per-layer path.

Run:  python benchmarks/condlr_step.py [--device cuda] [--repeats 15]   (one CPU thread)
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F

from common import device_name, interleaved_times

from robustlr.lowrank import CondLR, to_lowrank
from robustlr.models import create


def _with_gradients(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (8,), generator=generator).to(device)
    F.cross_entropy(model(x), y).backward()
    return model


def condlr_step_ratio(device: torch.device, repeats: int = 15) -> dict:
    """Median seconds of one optimiser step and their ratios:

    * ``condlr_vs_sgd_step``: CondLR (τ = 0.1, the device's default path) / SGD on the dense model (goal ≤ 1.5);
    * ``condlr_vs_lowrank_sgd_step``: the same CondLR step / SGD on the low-rank model's own parameters;
    * ``batched_vs_per_layer_step``: CondLR with ``batched=True`` / ``batched=False``.
    """
    torch.manual_seed(0)
    spec = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    dense = _with_gradients(create("wrn-16-4", **spec).to(device), device)
    low = to_lowrank(create("wrn-16-4", **spec), rank=0.2).to(device)
    models = {name: _with_gradients(copy.deepcopy(low), device) for name in ("batched", "per_layer", "sgd")}
    step = {"lr": 0.01, "momentum": 0.9}
    opts = {
        "condlr": CondLR(_with_gradients(low, device), tau=0.1, **step),
        "dense_sgd": torch.optim.SGD(dense.parameters(), **step),
        "lowrank_sgd": torch.optim.SGD(models["sgd"].parameters(), **step),
        "batched": CondLR(models["batched"], tau=0.1, batched=True, **step),
        "per_layer": CondLR(models["per_layer"], tau=0.1, batched=False, **step),
    }
    t = interleaved_times({name: opt.step for name, opt in opts.items()}, device, repeats)
    return {
        "condlr_step_seconds": t["condlr"],
        "dense_sgd_step_seconds": t["dense_sgd"],
        "lowrank_sgd_step_seconds": t["lowrank_sgd"],
        "condlr_vs_sgd_step": t["condlr"] / t["dense_sgd"],
        "condlr_vs_lowrank_sgd_step": t["condlr"] / t["lowrank_sgd"],
        "batched_vs_per_layer_step": t["batched"] / t["per_layer"],
        "batched_step_seconds": t["batched"],
        "per_layer_step_seconds": t["per_layer"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    print(json.dumps({"device": device_name(device), **condlr_step_ratio(device, args.repeats)}, indent=1))


if __name__ == "__main__":
    main()
