"""``robustlr spectrum``: singular spectra of attack perturbations (the LoRa-PGD paper's observation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import __version__
from ..attacks import RANKED_ATTACKS, build_attack
from ..files import file_stem
from ..evaluation.spectrum import perturbation_spectrum
from ..report import atomic_write_text, format_table, markdown_table, plot_energy_curves, plot_spectrum_shift
from .options import CliError, add_attack_options, add_data_options, add_model_options, add_run_options, default_out
from .plan import DEFAULT_RANKS
from .setup import device_of, load_data, load_model

__all__ = ["register", "write_spectrum"]

COLUMNS = {"attack": "attack", "effective_rank": "effective rank", "stable_rank": "stable rank",
           "nuclear_norm": "mean ‖δ_c‖_*", "energy_top": "E_r at r = 10 % of n"}


def write_spectrum(stats: list, out: Path, title: str, extra: dict) -> list[dict]:
    """Write spectrum.json, spectrum.md and the figures; return the summary rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in stats:
        r10 = max(1, round(0.1 * len(s.energy_curve)))
        rows.append({"attack": s.attack, "effective_rank": s.effective_rank, "stable_rank": s.stable_rank,
                     "nuclear_norm": s.nuclear_norm, "energy_top": s.energy_curve[r10 - 1]})
        plot_spectrum_shift(s.shift_fraction, out / f"shift_{file_stem(s.attack)}.png",
                            f"{s.attack}: relative shift of the image's singular values")
    plot_energy_curves({s.attack: s.energy_curve for s in stats}, out / "energy.png",
                       "Energy of δ in its top r singular values (mean over channels)")
    atomic_write_text(out / "spectrum.json", json.dumps(
        {"robustlr_version": __version__, "title": title, **extra, "attacks": [s.to_dict() for s in stats]}, indent=2))
    figures = "\n".join(f"![{s.attack}](shift_{file_stem(s.attack)}.png)" for s in stats)
    atomic_write_text(out / "spectrum.md", f"# {title}\n\n{markdown_table(rows, COLUMNS)}\n\n![energy](energy.png)\n\n{figures}\n")
    return rows


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    device = device_of(args)
    data = load_data(args)
    model = load_model(args, data)
    eps_list = args.eps or [0.5]
    if len(eps_list) != 1:
        raise CliError(f"spectrum takes one --eps, got {eps_list}")
    eps = eps_list[0]
    attacks = {}
    for name in dict.fromkeys(args.attack or args.default_attacks):
        for rank in (args.rank or DEFAULT_RANKS) if name in RANKED_ATTACKS else [None]:
            label = name if rank is None else f"{name} r={rank}"
            attacks[label] = build_attack(name, model, eps, rank=rank, steps=args.steps, restarts=args.restarts, seed=args.seed)
    x, y = data.images.to(device), data.labels.to(device)
    stats = perturbation_spectrum(model, x, y, attacks, batch_size=args.batch_size, progress=not args.no_progress)
    out = Path(args.out) if args.out else default_out("spectrum")
    rows = write_spectrum(stats, out, f"Perturbation spectra on {args.data} (ε = {eps})", {"eps": eps, "n": len(x)})
    print(format_table(rows, COLUMNS))
    print(f"\nspectrum written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "singular spectra of perturbations: relative shift of the image spectrum, energy in the top r, ranks"
    p = sub.add_parser("spectrum", help=text, description=text)
    add_model_options(p)
    add_data_options(p, n=500)
    add_attack_options(p, ["pgd-l2"])
    add_run_options(p, "spectrum")
    p.set_defaults(handler=run)
