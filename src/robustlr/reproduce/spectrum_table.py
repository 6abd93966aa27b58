"""``kind = "spectrum"``: how low-rank PGD perturbations are, on models the experiment trains.

The LoRa-PGD paper's observation (brief §2): PGD perturbations of images are approximately low-rank, and the
relative shift they cause in the image's singular values (§2.1, its Figure 1) concentrates on some indices.
For every finished run and every attack of ``[spectrum]``, :func:`robustlr.evaluation.spectrum.perturbation_spectrum`
gives the relative shift ``p_j``, the energy fraction ``E_r`` of δ in its top r singular values, and the mean
effective rank, stable rank and nuclear norm of δ per channel (§2.3).  A Gaussian perturbation of the same L2
norm is the full-rank reference.  The runs are trained first (:mod:`robustlr.reproduce.training`).

==============  ============================  =============================================================
key             default                       meaning
==============  ============================  =============================================================
attacks         ["pgd-l2", "pgd-linf"]        unranked attacks of :mod:`robustlr.attacks.registry`
eps_l2          1.0                           budget of the L2 attacks and of the Gaussian reference
eps_linf        0.1                           budget of the L∞ attacks
steps           10                            attack steps
ranks           [0.1, 0.2, 0.3, 0.4, 0.5]     ranks r of the ``E@r`` columns (fractions of the side, or ints)
n               1000                          first n test images
batch_size      250                           images per attack call
seed            0                             seed of the attacks' random starts and of the reference
checkpoint      "best"                        the run's ``best.pt`` or ``last.pt``
==============  ============================  =============================================================

Files: ``out/<run>/spectrum.json`` (per run; skipped when present with the same settings, a failure leaves
``spectrum.status.json``), ``shift_<run>_<attack>.png``, ``energy.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACK_NAMES, RANKED_ATTACKS, attack_norm, build_attack
from ..attacks.projections import clip_unit, normalize_per_sample, resolve_rank
from ..evaluation.spectrum import perturbation_spectrum
from ..evaluation.specs import AttackFn
from ..files import file_stem
from ..report import plot_energy_curves, plot_spectrum_shift
from .experiment import Experiment
from .records import read_record, write_record
from .settings import choice, choices, positive_int, positive_number, rank_list, seed
from .training import CHECKPOINTS, attempt, finished_runs, load_run, read_status, train_runs

__all__ = ["SPECTRUM_SCHEMA", "REFERENCE", "run_spectrum", "spectrum_rows", "spectrum_figures"]

_UNRANKED = tuple(a for a in ATTACK_NAMES if a not in RANKED_ATTACKS)

SPECTRUM_SCHEMA = {
    "attacks": (["pgd-l2", "pgd-linf"], choices(_UNRANKED)),
    "eps_l2": (1.0, positive_number),
    "eps_linf": (0.1, positive_number),
    "steps": (10, positive_int),
    "ranks": ([0.1, 0.2, 0.3, 0.4, 0.5], rank_list),
    "n": (1000, positive_int),
    "batch_size": (250, positive_int),
    "seed": (0, seed),
    "checkpoint": ("best", choice(CHECKPOINTS)),
}
"""The ``[spectrum]`` table: key -> (default, check)."""

REFERENCE = "gaussian-l2"
"""Name of the full-rank reference: Gaussian noise scaled to L2 norm ``eps_l2`` per image, then clipped."""

_STORED = ("attacks", "eps_l2", "eps_linf", "steps", "n", "seed", "checkpoint")


def _gaussian_reference(eps: float, seed: int) -> AttackFn:
    """``(x, y) -> clip(x + eps · g/‖g‖₂)`` with ``g`` standard Gaussian from a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return clip_unit(x + eps * normalize_per_sample(g, "l2"))

    return perturb


def _eps(settings: dict[str, Any], attack: str) -> float:
    return settings["eps_l2"] if attack == REFERENCE or attack_norm(attack) == "l2" else settings["eps_linf"]


def _run_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any], path: Path,
               progress: bool) -> None:
    attacks = {name: build_attack(name, model, _eps(settings, name), steps=settings["steps"], seed=settings["seed"])
               for name in settings["attacks"]}
    attacks[REFERENCE] = _gaussian_reference(settings["eps_l2"], settings["seed"])
    stats = perturbation_spectrum(model, x, y, attacks, batch_size=settings["batch_size"], progress=progress)
    write_record(path, settings, _STORED, {"side": min(x.shape[-2:]), "stats": [s.to_dict() for s in stats]})


def _read(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    return read_record(path, settings, _STORED, ("side", "stats"))


def run_spectrum(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> None:
    """Train the runs, then compute the spectra of every finished run that lacks them."""
    settings = exp.settings
    for state in train_runs(exp, out, only, progress):
        path = out / state.run / "spectrum.json"
        if state.status != "finished" or _read(path, settings) is not None:
            continue
        run = next(r for r in exp.runs if r["id"] == state.run)
        model, x, y = load_run(run, out, settings["checkpoint"], settings["n"])
        attempt(out / state.run / "spectrum.status.json", lambda: _run_model(model, x, y, settings, path, progress),
                f"{exp.name}: spectrum of {state.run}")


def spectrum_rows(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per (model, attack): ε, mean effective rank, stable rank and nuclear norm of δ per channel, the
    share of the image's relative singular-value shift on the smaller half of its spectrum (``Σ_{j > n/2} p_j``),
    and the energy fraction ``E@r`` of δ in its top r singular values at every rank of the settings."""
    rows: list[dict[str, Any]] = []
    for run in finished_runs(exp, out, rows):
        record = _read(out / run["id"] / "spectrum.json", exp.settings)
        if record is None:
            failure = read_status(out / run["id"] / "spectrum.status.json")
            rows += [{"model": run["id"], "status": failure[0], "error": failure[1]}] if failure else []
            continue
        for s in record["stats"]:
            row = {"model": run["id"], "attack": s["attack"], "eps": _eps(exp.settings, s["attack"]), "n": s["n"],
                   "effective_rank": s["effective_rank"], "stable_rank": s["stable_rank"],
                   "nuclear_norm": s["nuclear_norm"],
                   "shift_lower_half": sum(p or 0.0 for p in s["shift_fraction"][record["side"] // 2:])}
            for rank in exp.settings["ranks"]:
                r = resolve_rank(rank, record["side"])
                row[f"E@r={r}"] = s["energy_curve"][r - 1]
            rows.append({**row, "status": "ok"})
    return rows


def spectrum_figures(exp: Experiment, out: Path) -> list[Path]:
    """Per finished model and attack, the relative shift ``p_j`` of the image's singular values (the paper's
    Figure 1, ``shift_<model>_<attack>.png``); the energy curves ``E_r`` of δ of every model and attack
    (``energy.png``)."""
    paths, curves = [], {}
    for run in exp.runs:
        model = run["id"]
        record = _read(out / model / "spectrum.json", exp.settings)
        for s in record["stats"] if record else []:
            attack = s["attack"]
            shift = [float("nan") if p is None else p for p in s["shift_fraction"]]
            paths.append(plot_spectrum_shift(shift, out / f"{file_stem(f'shift_{model}_{attack}')}.png",
                                             f"{model}, {attack} (ε = {_eps(exp.settings, attack):g}): "
                                             "relative shift of σ_j(x)"))
            curves[f"{model}: {attack}"] = s["energy_curve"]
    if curves:
        paths.append(plot_energy_curves(curves, out / "energy.png", "Energy of δ in its top r singular values"))
    return paths
