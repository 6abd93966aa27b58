"""``make bench``: every benchmark ratio of robustlr, measured side by side in one run, written to
docs/benchmarks.md with the device it ran on.

Run:  python benchmarks/run_all.py [--device cuda] [--out docs/benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import attacks
import train
from common import device_name

GOALS = {
    "pgd_linf_vs_torchattacks": "≤ 1.0",
    "pgd_l2_vs_torchattacks": "≤ 1.0",
    "lora_pgd_vs_fwd_bwd_floor": "≤ 1.05",
    "pgd_l2_vs_fwd_bwd_floor": "(reference)",
    "state_bytes_lora_vs_pgd": "= 2r/n",
    "peak_memory_lora_vs_pgd": "≤ 1.05",
    "condlr_vs_dense_epoch": "≤ 1.0",
    "lowrank_vs_dense_inference": "≤ 0.6",
}


def rows_of(section: str, results: dict) -> list[tuple[str, str, float, str]]:
    return [(section, key, value, GOALS[key]) for key, value in results.items() if key in GOALS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches (a smoke run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids oversubscription on a loaded machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    repeats = 1 if args.quick else 5
    batch = 32 if args.quick else 256
    rows = []
    extras = []
    for shape in ("mnist", "cifar") + (("wrn",) if device.type == "cuda" else ()):
        res = attacks.run(shape, batch, 10, 0.1, device, repeats)
        rows += rows_of(f"attacks, {shape}-shaped, batch {batch}", res)
        extras.append(f"{shape}: rank r = {res['rank']}, 2r/n = {res['state_bytes_goal_2r_over_n']:.4f}; "
                      f"ours PGD-L∞ {res['pgd_linf_seconds']:.3f} s vs torchattacks {res['torchattacks_linf_seconds']:.3f} s; "
                      f"fwd+bwd {res['fwd_bwd_seconds'] * 1000:.1f} ms")
    tr = train.train_ratio(device, 2000 if args.quick else 12000, 128, 1 if args.quick else 3)
    rows += rows_of(f"training, LeNet5 rank 0.2, {tr['train_images']} Fashion-MNIST images", tr)
    inf = train.inference_ratio(device, 32 if args.quick else 128, repeats)
    rows += rows_of(f"inference, VGG16 rank 0.2, batch {inf['batch']}", inf)
    extras.append(f"CondLR epoch {tr['condlr_epoch_seconds']:.2f} s vs dense {tr['dense_epoch_seconds']:.2f} s; "
                  f"VGG16 inference low-rank {inf['vgg16_lowrank_seconds'] * 1000:.1f} ms vs dense {inf['vgg16_dense_seconds'] * 1000:.1f} ms")

    lines = [f"{'section':58s} {'ratio':34s} {'value':>8s}  goal"]
    lines += [f"{s:58s} {k:34s} {v:8.3f}  {g}" for s, k, v, g in rows]
    print(f"device: {device_name(device)}\n" + "\n".join(lines) + "\n\n" + "\n".join(extras))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    table = "\n".join(f"| {s} | `{k}` | {v:.3f} | {g} |" for s, k, v, g in rows)
    command = " ".join(["python benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    notes = Path(__file__).with_name("notes.md")
    doc = (f"# Benchmarks\n\nWritten by `make bench` (`{command}`) "
           f"on {stamp}.\n\n**Device:** {device_name(device)}, torch {torch.__version__}; {load}.\n\n"
           "Every ratio is measured side by side in one run, the timed functions interleaved (a, b, a, b, …) so that "
           "they see the same machine load; medians over the repeats.\n\n"
           "| what | ratio | measured | goal |\n|---|---|---|---|\n" + table + "\n\n"
           + "\n".join(f"- {e}" for e in extras) + "\n"
           + (f"\nNotes (from `benchmarks/notes.md`, written by hand; measured with the same commands):\n\n"
              f"{notes.read_text()}" if notes.is_file() else ""))
    if not args.quick:
        Path(args.out).write_text(doc)
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
