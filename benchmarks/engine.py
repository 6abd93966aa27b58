"""Engine overhead of the attacks: with a model of near-zero cost, only the attack's own work is timed.

The model maps an image to 10 logits through a global average pool and a 3×10 matrix (``x.mean((2, 3)) @ W``),
so its forward and backward are a few passes over the batch; what remains is the engine: input checks, random
start, steps, projections, the budget fit.  Rows, side by side in one run (interleaved repeats, medians):

  * ``pgd_{linf,l2}_{shape}_vs_torchattacks``: our PGD-10 time / torchattacks' (random start)   goal ≤ 1.0
  * ``lora_vs_pgd_{shape}``: LoRa-PGD-10 (L2, r = 0.1·n) time / PGD-L2-10 time                  goal ≤ 1.3

Shapes: ``cifar`` 512×3×32×32 and ``imagenet`` 64×3×224×224 (smaller batches with ``--quick``).

Run:  python benchmarks/engine.py [--device cuda] [--quick] [--repeats 5] [--profile]

``--profile`` prints, instead of the rows, torch.profiler's table of the operators of ``--repeats`` calls of each
attack (PGD-L∞, PGD-L2, LoRa-PGD) on each shape: where the engine's time goes.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from common import device_name, interleaved_times

from robustlr.attacks import PGD, LoRaPGD

SHAPES = {"cifar": (512, 3, 32), "imagenet": (64, 3, 224)}
QUICK_BATCH = {"cifar": 64, "imagenet": 4}


class PooledLinear(nn.Module):
    """``x ↦ mean_{h,w}(x) · W``: a model whose cost is negligible next to the attack's own work."""

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, classes, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight


def _batch(shape: str, device: torch.device, quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, size = SHAPES[shape]
    n = QUICK_BATCH[shape] if quick else n
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, size, size, generator=gen).to(device)
    return x, torch.randint(0, 10, (n,), generator=gen).to(device)


def pgd_vs_torchattacks(device: torch.device, quick: bool = False, repeats: int = 5) -> dict[str, float]:
    """Our PGD-10 time / torchattacks' PGD-10 time, L∞ (ε = 8/255, α = 2/255) and L2 (ε = 0.5, α = 0.09),
    random start, on each shape of :data:`SHAPES`.  Keys ``pgd_{norm}_{shape}_vs_torchattacks`` (ratios)
    and ``pgd_{norm}_{shape}_seconds`` (our time)."""
    import torchattacks

    model = PooledLinear().to(device).eval()
    rows: dict[str, float] = {}
    for shape in SHAPES:
        x, y = _batch(shape, device, quick)
        for norm, eps, alpha in (("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.09)):
            ours = PGD(model, eps, norm, steps=10, alpha=alpha, seed=0)
            peer = (torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True) if norm == "linf"
                    else torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=10, random_start=True))
            t = interleaved_times({"ours": lambda: ours(x, y), "peer": lambda: peer(x, y)}, device, repeats)
            rows[f"pgd_{norm}_{shape}_vs_torchattacks"] = t["ours"] / t["peer"]
            rows[f"pgd_{norm}_{shape}_seconds"] = t["ours"]
    return rows


def lora_vs_pgd(device: torch.device, quick: bool = False, repeats: int = 5) -> dict[str, float]:
    """LoRa-PGD-10 time (L2, ε = 0.5, rank 0.1·n per channel) / PGD-L2-10 time (random start) on each shape
    of :data:`SHAPES`.  Keys ``lora_vs_pgd_{shape}`` (ratios) and ``lora_{shape}_seconds``."""
    model = PooledLinear().to(device).eval()
    rows: dict[str, float] = {}
    for shape in SHAPES:
        x, y = _batch(shape, device, quick)
        lora = LoRaPGD(model, 0.5, rank=0.1, norm="l2", steps=10, seed=0)
        pgd = PGD(model, 0.5, "l2", steps=10, seed=0)
        t = interleaved_times({"lora": lambda: lora(x, y), "pgd": lambda: pgd(x, y)}, device, repeats)
        rows[f"lora_vs_pgd_{shape}"] = t["lora"] / t["pgd"]
        rows[f"lora_{shape}_seconds"] = t["lora"]
    return rows


def profile_tables(device: torch.device, quick: bool = False, calls: int = 5, rows: int = 15) -> str:
    """torch.profiler's operator table (self time, top ``rows``) of ``calls`` calls of PGD-L∞, PGD-L2 and
    LoRa-PGD (the settings of the rows above) on each shape, after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    model = PooledLinear().to(device).eval()
    tables = []
    for shape in SHAPES:
        x, y = _batch(shape, device, quick)
        for name, attack in (("PGD-L∞", PGD(model, 8 / 255, "linf", steps=10, alpha=2 / 255, seed=0)),
                             ("PGD-L2", PGD(model, 0.5, "l2", steps=10, alpha=0.09, seed=0)),
                             ("LoRa-PGD", LoRaPGD(model, 0.5, rank=0.1, norm="l2", steps=10, seed=0))):
            attack(x, y)
            with profile(activities=activities) as prof:
                for _ in range(calls):
                    attack(x, y)
            table = prof.key_averages().table(sort_by=sort, row_limit=rows)
            tables.append(f"{name} {shape} {tuple(x.shape)}, {calls} calls\n{table}")
    return "\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small batches: a smoke run")
    parser.add_argument("--profile", action="store_true", help="operator tables instead of the rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile:
        print(profile_tables(device, args.quick, args.repeats))
        return 0
    rows = {"device": device_name(device), **pgd_vs_torchattacks(device, args.quick, args.repeats),
            **lora_vs_pgd(device, args.quick, args.repeats)}
    json.dump(rows, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
