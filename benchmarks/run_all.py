"""``make bench``: every benchmark ratio of robustlr, measured side by side in one run, written to
docs/benchmarks.md with the device it ran on.

Run:  python benchmarks/run_all.py [--device cuda] [--out docs/benchmarks.md] [--quick]

Sections: the attacks against torchattacks and the forward+backward floor (``attacks.run``), the attack engine at
its users' scale (``attacks.preact_vs_torchattacks``, ``attacks.amp_floor`` on PreActResNet-18 and ResNet-50 at
224 under bf16 autocast), host round trips per attack call and per training step (``attacks.attack_syncs``,
``train.step_syncs``), the engine's own overhead with a near-zero-cost model (``engine``), the CondLR step against
SGD's (``condlr_step``), training and inference of low-rank models (``train``), data loading (``data_loading``), and
the AutoAttack suite against the original AutoAttack on the two LeNet5s of lorapgd-table and a gradient-masking
one (``suite``).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import attacks
import condlr_step
import data_loading
import engine
import suite
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
    "preact18_pgd_vs_torchattacks": "≤ 1.0",
    "pgd_vs_fwd_bwd_floor_bf16": "≤ 1.05",
    "lora_pgd_vs_fwd_bwd_floor_bf16": "≤ 1.05",
    "syncs_per_attack_call": "≤ 3",
    "syncs_per_training_step": "≤ 1",
    **{f"pgd_{norm}_{shape}_vs_torchattacks": "≤ 1.0" for norm in ("linf", "l2") for shape in engine.SHAPES},
    **{f"lora_vs_pgd_{shape}": "≤ 1.3" for shape in engine.SHAPES},
    "condlr_vs_sgd_step": "≤ 1.5",
    "condlr_vs_dense_sgd_step": "(reference)",
    "floor_vs_sgd_step": "(reference)",
    "batched_vs_per_layer_step": "(reference)",
    "uint8_vs_float32_stored_bytes": "= 0.25",
    "uint8_vs_float32_peak_rss": "(reference)",
    "folder_workers2_vs_workers0_images_per_s": "(reference)",
    "autoattack_points_ours_minus_theirs": "≤ +0.5",
    "autoattack_time_ours_vs_theirs": "≤ 0.7",
    "autoattack_forward_images_ours_vs_theirs": "(reference)",
    "autoattack_backward_images_ours_vs_theirs": "(reference)",
    "autoattack_time_floor_ours_vs_theirs": "(reference)",
    "apgd_ce_time_ours_vs_theirs": "≤ 1.0",
    "apgd_ce_early_stop_time_ours_vs_theirs": "(reference)",
    "apgd_ce_points_ours_minus_theirs": "within ±1",
    "lora_apgd_minus_lora_pgd_points_30_passes": "(reference)",
    "lora_apgd_vs_lora_pgd_time": "(reference)",
    "autoattack_engine_time_ours_vs_theirs": "(reference)",
    "autoattack_host_reads_ours_vs_theirs": "(reference)",
    "autoattack_device_ops_ours_vs_theirs": "(reference)",
}

def rows_of(section: str, results: dict) -> list[tuple[str, str, float, str]]:
    return [(section, key, value, GOALS[key]) for key, value in results.items() if key in GOALS]


def shown(value: float) -> str:
    """A measured value as the table shows it: a count as an integer, a ratio with 3 decimals."""
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def scale_rows(device: torch.device, quick: bool, repeats: int) -> tuple[list, list[str]]:
    """The attack engine at its users' scale, and the host round trips (see the module docstring)."""
    steps = 2 if quick else 10
    rows, extras = [], []
    batch = 8 if quick else 128 if device.type == "cuda" else 64  # 64: a CPU run of make bench stays < 15 min
    pre = attacks.preact_vs_torchattacks(batch, steps, device, repeats)
    rows += rows_of(f"PGD-{steps} L∞, PreActResNet-18, CIFAR shape, batch {batch}", pre)
    extras.append(f"PreActResNet-18 PGD-{steps} batch {batch}: ours {pre['preact18_pgd_seconds']:.3f} s vs "
                  f"torchattacks {pre['preact18_torchattacks_seconds']:.3f} s")
    for name, size, batch in (("preact-resnet18", 32, 4 if quick else 32), ("resnet50", 224, 2 if quick else 4)):
        amp = attacks.amp_floor(name, size, batch, steps, device, repeats)
        rows += rows_of(f"bf16 autocast, {name} {size}×{size}, batch {batch}, {steps} steps", amp)
        extras.append(f"{name} {size}×{size} batch {batch}, bf16: fwd+bwd {amp['fwd_bwd_seconds'] * 1000:.1f} ms")
    syncs = attacks.attack_syncs(device)
    rows += rows_of("host syncs per attack call (FGSM, PGD, LoRa-PGD; 10, 100 steps)", syncs)
    extras.append("host round trips per attack call: " + ", ".join(
        f"{k.removeprefix('syncs_')} {v}" for k, v in syncs.items() if k != "syncs_per_attack_call"))
    step = train.step_syncs(device)
    rows += rows_of("host syncs per training step (LeNet5; plain, PGD-10 adv.)", step)
    extras.append("host round trips in k training steps: " + ", ".join(
        f"{k.removeprefix('syncs_')} {v}" for k, v in step.items() if k != "syncs_per_training_step"))
    return rows, extras


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches (a smoke run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids oversubscription on a loaded machine")
    parser.add_argument("--suite-n", type=int, default=None,
                        help="test images of the AutoAttack rows (default 100, --quick 20; 0 skips them); the first "
                             "run trains the two LeNet5s of lorapgd-table, about 20 minutes on one CPU thread")
    args = parser.parse_args(argv)
    if args.suite_n is None:
        args.suite_n = 20 if args.quick else 100
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
    more, scale_extras = scale_rows(device, args.quick, 1 if args.quick else 3)  # 3: the ResNets are slow on a CPU
    rows += more
    extras += scale_extras
    shapes = ", ".join(f"{engine.QUICK_BATCH[name] if args.quick else n}×{c}×{h}×{h}"
                       for name, (n, c, h) in engine.SHAPES.items())
    rows += rows_of(f"engine overhead, near-zero-cost model, {shapes}",
                    {**engine.pgd_vs_torchattacks(device, args.quick, repeats),
                     **engine.lora_vs_pgd(device, args.quick, repeats)})
    step = condlr_step.condlr_step_ratio(device, 3 if args.quick else 15)
    rows += rows_of("CondLR step / SGD step, WRN-16-4 rank 0.2, CIFAR shape", step)
    extras.append(f"CondLR step {step['condlr_step_seconds'] * 1000:.1f} ms vs SGD on the same low-rank model "
                  f"{step['lowrank_sgd_step_seconds'] * 1000:.1f} ms (dense WRN-16-4: "
                  f"{step['dense_sgd_step_seconds'] * 1000:.1f} ms); its matrix products alone "
                  f"{step['products_seconds'] * 1000:.1f} ms, core SVDs {step['core_svds_seconds'] * 1000:.1f} ms")
    tr = train.train_ratio(device, 2000 if args.quick else 12000, 128, 1 if args.quick else 3)
    rows += rows_of(f"training, LeNet5 rank 0.2, {tr['train_images']} Fashion-MNIST images", tr)
    inf = train.inference_ratio(device, 32 if args.quick else 128, repeats)
    rows += rows_of(f"inference, VGG16 rank 0.2, batch {inf['batch']}", inf)
    extras.append(f"CondLR epoch {tr['condlr_epoch_seconds']:.2f} s vs dense {tr['dense_epoch_seconds']:.2f} s; "
                  f"VGG16 inference low-rank {inf['vgg16_lowrank_seconds'] * 1000:.1f} ms vs dense {inf['vgg16_dense_seconds'] * 1000:.1f} ms")

    for run_id, eps in (("pgd-l2", 1.0), ("standard", 1.0), (suite.MASKING["id"], 2.0))[:1 if args.quick else 3] \
            if args.suite_n else ():
        aa = suite.run(args.suite_n, eps, suite.MODELS, device, 1 if args.quick else 3, 500, run_id,
                       suite_only=run_id != "pgd-l2")
        rows += rows_of(f"AutoAttack vs pyautoattack (standard version), LeNet5 {run_id}, L2 ε = {eps:g}, "
                        f"{args.suite_n} Fashion-MNIST test images", aa)
        extras.append(f"AutoAttack, LeNet5 {run_id}, L2 ε = {eps:g}: robust accuracy ours "
                      f"{aa['autoattack_robust_ours']:.4f} in {aa['autoattack_seconds_ours']:.1f} s, pyautoattack "
                      f"{aa['autoattack_robust_theirs']:.4f} in {aa['autoattack_seconds_theirs']:.1f} s (clean "
                      f"{aa['clean_accuracy']:.4f}; gradient masking flagged: "
                      f"{'yes' if aa['autoattack_masking_flagged'] else 'no'}); the model's own time for the passes "
                      f"each made: ours {aa['autoattack_model_seconds_ours']:.1f} s, pyautoattack "
                      f"{aa['autoattack_model_seconds_theirs']:.1f} s")
    if args.suite_n:
        eng = suite.engine_rows(device, 16 if args.quick else 64, 4 if args.quick else 16, 1 if args.quick else 2)
        rows += rows_of("AutoAttack vs pyautoattack without the model's cost: near-zero-cost model, no point breaks",
                        eng)
        extras.append(f"AutoAttack host round trips per call ({eng['autoattack_host_reads_images']} images, every "
                      "stage in full): ours "
                      f"{eng['autoattack_host_reads_ours']}, pyautoattack {eng['autoattack_host_reads_theirs']}; "
                      f"device operators (kernel launches on a GPU): ours {eng['autoattack_device_ops_ours']}, "
                      f"pyautoattack {eng['autoattack_device_ops_theirs']}")
    loading, loading_extras = data_loading.run_all_rows(args.quick)
    rows += rows_of("data: CIFAR-shaped split in memory; JPEG folder, 224×224 evaluation view", loading)
    extras += loading_extras

    lines = [f"{'section':58s} {'ratio':34s} {'value':>8s}  goal"]
    lines += [f"{s:58s} {k:34s} {shown(v):>8s}  {g}" for s, k, v, g in rows]
    print(f"device: {device_name(device)}\n" + "\n".join(lines) + "\n\n" + "\n".join(extras))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    table = "\n".join(f"| {s} | `{k}` | {shown(v)} | {g} |" for s, k, v, g in rows)
    gpu = ("" if device.type == "cuda" else
           "**No GPU was available to this run.** The GPU rows of issue 11 (images/s of PGD-10 on WRN-28-10 at batch "
           "512 vs torchattacks, CondLR epoch / dense epoch on VGG16, a 2-GPU NCCL DDP run = the 1-GPU run within "
           "1e-5) are not measured; every row below is a CPU figure, at the batch its section names.\n\n")
    command = " ".join(["python benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    notes = Path(__file__).with_name("notes.md")
    doc = (f"# Benchmarks\n\nWritten by `make bench` (`{command}`) "
           f"on {stamp}.\n\n**Device:** {device_name(device)}, torch {torch.__version__}; {load}.\n\n" + gpu +
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
