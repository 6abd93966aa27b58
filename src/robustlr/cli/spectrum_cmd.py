"""``robustlr spectrum``: singular spectra of attack perturbations (the LoRa-PGD paper's observation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import __version__
from ..files import file_stem
from ..evaluation.spectrum import perturbation_spectrum
from ..report import atomic_write_text, format_table, markdown_table, plot_energy_curves, plot_spectrum_shift
from .options import CliError, add_attack_options, add_data_options, add_model_options, add_run_options
from .outputs import check_out
from .plan import Plan, plan_attacks
from .setup import check_counts, check_model_fits, device_of, load_data, load_model

__all__ = ["register", "write_spectrum", "SPECTRUM_EPS", "spectrum_budget"]

SPECTRUM_EPS = {"l2": [0.5], "linf": [0.05]}
"""The budget of each norm's attacks when neither ``--eps-<norm>`` nor ``--eps`` is given."""
CONTINUE_HINT = "rerun the command (nothing is resumable: the spectra are written at the end; the same --out is replaced)"

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


def spectrum_budget(plan: Plan) -> float:
    """The one budget of ``plan``'s attacks.

    Raises:
        CliError: naming the option that gave the budgets if it gave several or a zero (a zero
            perturbation has no spectrum).
    """
    if len(plan.eps) != 1:
        raise CliError(f"{plan.eps_option} takes one budget for a spectrum ({plan.norm} attacks), got {plan.eps}")
    if plan.eps[0] == 0:
        raise CliError(f"{plan.eps_option} must be > 0 for a spectrum: a zero perturbation has no spectrum; got 0")
    return plan.eps[0]


def run(args: argparse.Namespace) -> int:
    """Check every input (device, output directory, counts, data, model and its fit, attacks and one budget
    > 0 per norm) before any work, then attack, and write the spectra into ``--out``."""
    device = device_of(args)
    output = check_out(args, "spectrum")
    check_counts(args)
    torch.manual_seed(args.seed)
    data = load_data(args)
    model = load_model(args, data, device)
    check_model_fits(model, data, args, device)
    plans = plan_attacks(args, model, data, SPECTRUM_EPS)
    eps = {plan.norm: spectrum_budget(plan) for plan in plans}
    attacks = {label: spec.factory(eps[plan.norm]) for plan in plans for label, spec in plan.attacks.items()}
    eps_of = {label: eps[plan.norm] for plan in plans for label in plan.attacks}
    out = output.create()
    x, y = data.images.to(device), data.labels.to(device)
    stats = perturbation_spectrum(model, x, y, attacks, batch_size=args.batch_size, progress=not args.no_progress)
    budget = ", ".join(f"ε_{norm} = {value:g}" for norm, value in eps.items())
    rows = write_spectrum(stats, out, f"Perturbation spectra on {args.data} ({budget})",
                          {"eps": eps, "eps_of": eps_of, "n": len(x)})
    output.finish()
    print(format_table(rows, COLUMNS))
    print(f"\nspectrum written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "singular spectra of perturbations: relative shift of the image spectrum, energy in the top r, ranks"
    budgets = ", ".join(f"{norm} {values[0]:g}" for norm, values in SPECTRUM_EPS.items())
    p = sub.add_parser("spectrum", help=text, description=f"{text}. Each attack runs at one budget > 0, from "
                       f"--eps-linf / --eps-l2 for its norm, else --eps (default: {budgets}).")
    add_model_options(p)
    add_data_options(p, n=500)
    add_attack_options(p, ["pgd-l2"])
    add_run_options(p, "spectrum")
    p.set_defaults(handler=run, continue_hint=CONTINUE_HINT)
