"""CondLR optimizer step / SGD step on a WRN-16-4 CIFAR-shaped model at rank 0.2 (goal ≤ 1.5), the step only.

Gradients of one batch are present; ``optimizer.step()`` alone is timed, all timed functions interleaved
(:func:`common.interleaved_times`), medians. The goal's ratio is against ``torch.optim.SGD`` with the same lr,
momentum and weight decay on the same low-rank model's parameters (``condlr_vs_sgd_step``). References: SGD on
the dense WRN-16-4 that the low-rank model replaces, the batched linear algebra (CondLR's default) against the
per-layer path, and the floor of the step, ``(SGD step + the step's matrix products + the SVDs of its cores) /
SGD step``: the four products of every basis (``A = BᵀG``, ``D = G − B A``, ``XᵀX``, ``X L⁻ᵀ``: 8·n·r² flops for
an n × r basis) timed alone as batched products, and the cores' SVDs, without anything else CondLR does.

Run:  python benchmarks/condlr_step.py [--device cuda] [--repeats 15]   (one CPU thread)
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict

import torch
import torch.nn.functional as F

from common import device_name, interleaved_times

from robustlr.lowrank import CondLR, LowRankLayer, to_lowrank
from robustlr.models import create

#: The hyperparameters of every optimiser timed here (a CIFAR recipe's momentum and weight decay).
STEP = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def _with_gradients(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (8,), generator=generator).to(device)
    F.cross_entropy(model(x), y).backward()
    return model


def _floor_parts(model: torch.nn.Module, device: torch.device) -> dict[str, object]:
    """Functions running only the step's batched matrix products (bases of equal shape stacked, as CondLR does)
    and only its cores' SVDs; with the products' flop count."""
    bases: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
    cores: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
    for layer in model.modules():
        if isinstance(layer, LowRankLayer):
            u, s, v = (t.detach() for t in layer.factors())
            bases[tuple(u.shape)].append(u)
            bases[tuple(v.shape)].append(v)
            cores[tuple(s.shape)].append(s)
    generator = torch.Generator().manual_seed(1)
    rotations = {r: torch.linalg.qr(torch.randn(r, r, generator=generator))[0].to(device) for (r, _) in cores}
    work = []
    for (_, r), members in bases.items():
        basis = torch.stack(members)
        gradient = torch.randn(basis.shape, generator=generator).to(device)
        work.append((basis, gradient, torch.eye(r, device=device).expand(len(members), r, r).contiguous()))
    # the fresh cores are diagonal (truncated SVDs), which LAPACK decomposes faster than the dense cores of training
    stacked_cores = [torch.stack(members) @ rotations[shape[0]] for shape, members in cores.items()]

    def products() -> None:
        for basis, gradient, inverse in work:
            direction = torch.baddbmm(gradient, basis, basis.mT @ gradient, alpha=-1)
            x = basis - 0.01 * direction
            torch.bmm(x.mT, x)
            torch.bmm(x, inverse)

    def svds() -> None:
        for s in stacked_cores:
            torch.linalg.svd(s, full_matrices=False)

    flops = sum(8 * b.shape[0] * b.shape[1] * b.shape[2] ** 2 for b, _, _ in work)
    return {"products": products, "svds": svds, "flops": flops}


def condlr_step_ratio(device: torch.device, repeats: int = 15) -> dict:
    """Median seconds of one optimiser step and their ratios:

    * ``condlr_vs_sgd_step``: CondLR (τ = 0.1, defaults) / SGD on the same low-rank model (goal ≤ 1.5);
    * ``condlr_vs_dense_sgd_step``: the same CondLR step / SGD on the dense WRN-16-4;
    * ``batched_vs_per_layer_step``: CondLR with ``batched=True`` (the default) / ``batched=False``;
    * ``floor_vs_sgd_step``: (SGD step + the step's matrix products + its cores' SVDs) / SGD step.
    """
    torch.manual_seed(0)
    spec = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    dense = _with_gradients(create("wrn-16-4", **spec).to(device), device)
    low = to_lowrank(create("wrn-16-4", **spec), rank=0.2).to(device)
    models = {name: _with_gradients(copy.deepcopy(low), device) for name in ("condlr", "per_layer", "sgd")}
    floor = _floor_parts(low, device)
    fns = {
        "condlr": CondLR(models["condlr"], tau=0.1, **STEP).step,
        "sgd": torch.optim.SGD(models["sgd"].parameters(), **STEP).step,
        "dense_sgd": torch.optim.SGD(dense.parameters(), **STEP).step,
        "per_layer": CondLR(models["per_layer"], tau=0.1, batched=False, **STEP).step,
        "products": floor["products"],
        "svds": floor["svds"],
    }
    t = interleaved_times(fns, device, repeats)
    return {
        "condlr_step_seconds": t["condlr"],
        "lowrank_sgd_step_seconds": t["sgd"],
        "dense_sgd_step_seconds": t["dense_sgd"],
        "per_layer_step_seconds": t["per_layer"],
        "products_seconds": t["products"],
        "core_svds_seconds": t["svds"],
        "products_gflop": floor["flops"] / 1e9,
        "condlr_vs_sgd_step": t["condlr"] / t["sgd"],
        "condlr_vs_dense_sgd_step": t["condlr"] / t["dense_sgd"],
        "batched_vs_per_layer_step": t["condlr"] / t["per_layer"],
        "floor_vs_sgd_step": (t["sgd"] + t["products"] + t["svds"]) / t["sgd"],
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
