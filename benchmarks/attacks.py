"""Attack benchmarks: ratios against torchattacks and against the model's own forward+backward.

Prints, on the same model and batch in one run:
  * our PGD time / torchattacks PGD time (L∞ and L2, 10 steps, random start)        goal ≤ 1.0
  * LoRa-PGD time / (steps × the model's forward+backward time)                    goal ≤ 1.05
  * bytes of attack state LoRa-PGD / PGD                                           goal 2r/n
  * peak memory LoRa-PGD / PGD                                                     goal ≤ 1.05

Run:  python benchmarks/attacks.py [--device cuda] [--shape mnist|cifar|wrn] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from common import device_name, interleaved_times, peak_memory

from robustlr.attacks import PGD, LoRaPGD

SHAPES = {"mnist": (1, 28), "cifar": (3, 32), "wrn": (3, 32)}


def make_model(shape: str) -> nn.Module:
    """A LeNet-like CNN for 28×28, a VGG-like CNN for CIFAR shapes, or WRN-28-10 (GPU rows)."""
    if shape == "wrn":
        from robustlr.models import create

        return create("wrn-28-10", num_classes=10, in_channels=3, image_size=32)
    c, n = SHAPES[shape]
    width = 32 if shape == "mnist" else 64
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (n // 4) ** 2, 256), nn.LeakyReLU(), nn.Linear(256, 10),
    )


def run(shape: str, batch: int, steps: int, rank: float, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = make_model(shape).to(device).eval()
    c, n = SHAPES[shape]
    x = torch.rand(batch, c, n, n, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    import torchattacks

    rows: dict[str, float] = {}
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        ours = PGD(model, eps, norm, steps=steps, seed=0)
        peer = (torchattacks.PGD(model, eps=eps, alpha=ours.alpha, steps=steps, random_start=True) if norm == "linf"
                else torchattacks.PGDL2(model, eps=eps, alpha=ours.alpha, steps=steps, random_start=True))
        t = interleaved_times({"ours": lambda: ours(x, y), "peer": lambda: peer(x, y)}, device, repeats)
        t_ours, t_peer = t["ours"], t["peer"]
        rows[f"pgd_{norm}_vs_torchattacks"] = t_ours / t_peer
        rows[f"pgd_{norm}_seconds"] = t_ours
        rows[f"torchattacks_{norm}_seconds"] = t_peer

    def fwd_bwd() -> None:
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y, reduction="sum"), xx)

    def floor() -> None:
        for _ in range(steps):
            fwd_bwd()

    lora = LoRaPGD(model, 0.5, rank=rank, steps=steps, seed=0)
    pgd_l2 = PGD(model, 0.5, "l2", steps=steps, seed=0)
    t = interleaved_times({"floor": floor, "lora": lambda: lora(x, y), "pgd": lambda: pgd_l2(x, y)}, device, repeats)
    rows["fwd_bwd_seconds"] = t["floor"] / steps
    rows["lora_pgd_seconds"] = t["lora"]
    rows["lora_pgd_vs_fwd_bwd_floor"] = t["lora"] / t["floor"]
    rows["pgd_l2_vs_fwd_bwd_floor"] = t["pgd"] / t["floor"]
    r = lora.resolved_rank(tuple(x.shape))
    rows["rank"] = r
    rows["state_bytes_lora_vs_pgd"] = lora.state_bytes(tuple(x.shape)) / pgd_l2.state_bytes(tuple(x.shape))
    rows["state_bytes_goal_2r_over_n"] = 2 * r / n
    rows["peak_memory_lora_vs_pgd"] = peak_memory(lambda: lora(x, y), device) / peak_memory(lambda: pgd_l2(x, y), device)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {}
    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}; {args.steps} steps")
    for shape in args.shape or ["mnist", "cifar"]:
        rows = run(shape, args.batch, args.steps, args.rank, device, args.repeats)
        results[shape] = rows
        print(f"\n[{shape}]")
        for key, value in rows.items():
            print(f"  {key:32s} {value:.4g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(device), "torch": torch.__version__, "batch": args.batch,
                       "steps": args.steps, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
