"""Attack benchmarks: ratios against torchattacks and against the model's own forward+backward.

Prints, on the same model and batch in one run (:func:`run`):
  * our PGD time / torchattacks PGD time (L∞ and L2, 10 steps, random start)        goal ≤ 1.0
  * LoRa-PGD time / (steps × the model's forward+backward time)                    goal ≤ 1.05
  * bytes of attack state LoRa-PGD / PGD                                           goal 2r/n
  * peak memory LoRa-PGD / PGD                                                     goal ≤ 1.05
and at the users' scale:
  * :func:`preact_vs_torchattacks`: PGD-10 L∞ on PreActResNet-18, CIFAR shape, ours / torchattacks    goal ≤ 1.0
  * :func:`amp_floor`: PGD-10 L∞ and LoRa-PGD time / (steps × forward+backward), both under bf16
    autocast, on PreActResNet-18 (32×32) and ResNet-50 (224×224)                                  goal ≤ 1.05
  * :func:`attack_syncs`: host round trips per attack call (robustlr.profiling.HostSyncs), at 10 and
    100 steps                                                                                   goal ≤ 3

Run:  python benchmarks/attacks.py [--device cuda] [--shape mnist|cifar|wrn] [--batch 256] [--scale]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from common import autocast, device_name, interleaved_times, peak_memory

from robustlr.attacks import FGSM, PGD, LoRaPGD
from robustlr.models import create
from robustlr.profiling import HostSyncs

SHAPES = {"mnist": (1, 28), "cifar": (3, 32), "wrn": (3, 32)}


def make_model(shape: str) -> nn.Module:
    """A LeNet-like CNN for 28×28, a VGG-like CNN for CIFAR shapes, or WRN-28-10 (GPU rows)."""
    if shape == "wrn":
        return create("wrn-28-10", num_classes=10, in_channels=3, image_size=32)
    c, n = SHAPES[shape]
    width = 32 if shape == "mnist" else 64
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (n // 4) ** 2, 256), nn.LeakyReLU(), nn.Linear(256, 10),
    )


def floor_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, amp: torch.dtype | None = None):
    """``steps`` forward+backward passes of ``model`` on ``(x, y)`` with the input gradient (what an attack step
    cannot avoid), under autocast to ``amp`` if given: the floor an attack of ``steps`` steps is timed against."""

    def floor() -> None:
        for _ in range(steps):
            xx = x.clone().requires_grad_(True)
            with autocast(x.device, amp):
                loss = F.cross_entropy(model(xx), y, reduction="sum")
            torch.autograd.grad(loss, xx)

    return floor


def peer_pgd(model: nn.Module, norm: str, eps: float, alpha: float, steps: int):
    """torchattacks' PGD (L∞) or PGDL2 with our step size and a random start."""
    import torchattacks

    kind = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    return kind(model, eps=eps, alpha=alpha, steps=steps, random_start=True)


def run(shape: str, batch: int, steps: int, rank: float, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = make_model(shape).to(device).eval()
    c, n = SHAPES[shape]
    x = torch.rand(batch, c, n, n, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rows: dict[str, float] = {}
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        ours = PGD(model, eps, norm, steps=steps, seed=0)
        peer = peer_pgd(model, norm, eps, ours.alpha, steps)
        t = interleaved_times({"ours": lambda: ours(x, y), "peer": lambda: peer(x, y)}, device, repeats)
        t_ours, t_peer = t["ours"], t["peer"]
        rows[f"pgd_{norm}_vs_torchattacks"] = t_ours / t_peer
        rows[f"pgd_{norm}_seconds"] = t_ours
        rows[f"torchattacks_{norm}_seconds"] = t_peer

    lora = LoRaPGD(model, 0.5, rank=rank, steps=steps, seed=0)
    pgd_l2 = PGD(model, 0.5, "l2", steps=steps, seed=0)
    t = interleaved_times({"floor": floor_fn(model, x, y, steps), "lora": lambda: lora(x, y),
                           "pgd": lambda: pgd_l2(x, y)}, device, repeats)
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


def _batch(model_name: str, size: int, batch: int, device: torch.device):
    torch.manual_seed(0)
    model = create(model_name, num_classes=10, in_channels=3, image_size=size).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    return model, x, torch.randint(0, 10, (batch,), device=device)


def preact_vs_torchattacks(batch: int, steps: int, device: torch.device, repeats: int) -> dict:
    """PGD-L∞ (ε = 8/255, ``steps`` steps, random start) on PreActResNet-18 at CIFAR shape: our time /
    torchattacks' time, interleaved, medians (``preact18_pgd_vs_torchattacks``, goal ≤ 1.0)."""
    model, x, y = _batch("preact-resnet18", 32, batch, device)
    ours = PGD(model, 8 / 255, "linf", steps=steps, seed=0)
    peer = peer_pgd(model, "linf", 8 / 255, ours.alpha, steps)
    t = interleaved_times({"ours": lambda: ours(x, y), "peer": lambda: peer(x, y)}, device, repeats)
    return {"preact18_pgd_vs_torchattacks": t["ours"] / t["peer"], "preact18_pgd_seconds": t["ours"],
            "preact18_torchattacks_seconds": t["peer"], "batch": batch}


def amp_floor(model_name: str, size: int, batch: int, steps: int, device: torch.device, repeats: int,
              amp: torch.dtype = torch.bfloat16) -> dict:
    """Attack time / (``steps`` × forward+backward), attack and floor under autocast to ``amp``, for PGD-L∞
    (ε = 8/255) and LoRa-PGD (L2, ε = 0.5, r = 0.1·n) on ``model_name`` at ``size``×``size`` (goal ≤ 1.05: an attack
    step costs one forward+backward and little else, also in mixed precision)."""
    model, x, y = _batch(model_name, size, batch, device)
    pgd = PGD(model, 8 / 255, "linf", steps=steps, seed=0)
    lora = LoRaPGD(model, 0.5, rank=0.1, steps=steps, seed=0)

    def under_amp(attack):
        def call() -> None:
            with autocast(device, amp):
                attack(x, y)
        return call

    t = interleaved_times({"floor": floor_fn(model, x, y, steps, amp), "pgd": under_amp(pgd),
                           "lora": under_amp(lora)}, device, repeats)
    return {"pgd_vs_fwd_bwd_floor_bf16": t["pgd"] / t["floor"],
            "lora_pgd_vs_fwd_bwd_floor_bf16": t["lora"] / t["floor"],
            "fwd_bwd_seconds": t["floor"] / steps, "batch": batch}


def attack_syncs(device: torch.device, steps: tuple[int, ...] = (10, 100)) -> dict:
    """Host round trips (:class:`robustlr.profiling.HostSyncs`) of one call of each attack (after a warm-up
    call), on a small CNN at 28×28 (the count is the engine's, not the model's), for each number of ``steps``:
    ``syncs_<attack>_<steps>``; ``syncs_per_attack_call`` is the largest (goal ≤ 3, the same for every
    number of steps)."""
    torch.manual_seed(0)
    model = make_model("mnist").to(device).eval()
    x = torch.rand(4, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (4,), device=device)

    def count(attack) -> int:
        attack(x, y)  # warm-up: lazily built state is not the per-call cost
        with HostSyncs() as syncs:
            attack(x, y)
        return syncs.total

    rows: dict[str, float] = {"syncs_fgsm": count(FGSM(model, 8 / 255))}
    for n in steps:
        rows[f"syncs_pgd_linf_{n}"] = count(PGD(model, 8 / 255, "linf", steps=n))
        rows[f"syncs_pgd_l2_{n}"] = count(PGD(model, 0.5, "l2", steps=n))
        rows[f"syncs_lora_pgd_{n}"] = count(LoRaPGD(model, 0.5, rank=3, steps=n))
    rows["syncs_per_attack_call"] = max(rows.values())
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
    parser.add_argument("--scale", action="store_true",
                        help="instead: the users'-scale rows (PreActResNet-18 vs torchattacks at --batch, bf16 floors "
                             "of PreActResNet-18 at batch 32 and ResNet-50 at 224 at batch 4, host syncs)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {}
    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}; {args.steps} steps")
    scale = {"preact18": lambda: preact_vs_torchattacks(args.batch, args.steps, device, args.repeats),
             "preact18_bf16": lambda: amp_floor("preact-resnet18", 32, 32, args.steps, device, args.repeats),
             "resnet50_224_bf16": lambda: amp_floor("resnet50", 224, 4, args.steps, device, args.repeats),
             "syncs": lambda: attack_syncs(device)}
    plain = {shape: lambda shape=shape: run(shape, args.batch, args.steps, args.rank, device, args.repeats)
             for shape in args.shape or ["mnist", "cifar"]}
    for section, measure in (scale if args.scale else plain).items():
        rows = measure()
        results[section] = rows
        print(f"\n[{section}]")
        for key, value in rows.items():
            print(f"  {key:32s} {value:.4g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(device), "torch": torch.__version__, "batch": args.batch,
                       "steps": args.steps, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
