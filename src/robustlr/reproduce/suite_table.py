"""``kind = "suite-table"``: LoRa-PGD against AutoAttack, robust accuracy and time, on models the experiment trains.

The revised LoRa-PGD paper claims its attack is "comparable to AutoAttack at orders of magnitude less time"
(LoRa-PGD brief §4.2, [ABS2]; CIFAR-10 only).  This kind measures it on the ``[[runs]]`` of the config (trained
first, resumably: :mod:`robustlr.reproduce.training`), in L2 on the first ``n`` test images, cell by cell:

=================  ==============================================================================================
cell               attack
=================  ==============================================================================================
``pgd-l2``         PGD-L2 of the registry, ``steps`` steps (α = 1.8ε/steps, random start)
``lora-pgd``       LoRa-PGD, ``steps`` steps, per init of ``inits`` and rank of ``ranks``
``lora-apgd``      LoRa-APGD (:class:`~robustlr.attacks.lora_apgd.LoRaAPGD`), ``apgd_steps`` steps, per rank
``apgd-ce``        APGD-CE, ``apgd_steps`` steps
``autoattack``     robustlr's AutoAttack: ``evaluate(suite="autoattack", norm="l2")`` (APGD-CE → APGD-T → FAB-T →
                   Square, standard version, as a cascade), one cell per ε
``pyautoattack``   the original AutoAttack, ``pyautoattack.AutoAttack(model, norm="L2", eps=ε, version="standard",
                   seed=0)`` and ``run_standard_evaluation(x, y, batch_size=batch_size)``, one cell per ε; when
                   pyautoattack is not installed its rows say so (status ``skipped``)
=================  ==============================================================================================

The ``[suite]`` table sets them:

==============  ===============================  ===========================================================
key             default                          meaning
==============  ===============================  ===========================================================
eps             [0.5, 1.0, 1.5]                  L2 budgets ε > 0 (images in [0, 1])
ranks           [0.1, 0.3]                       per-channel ranks of LoRa-PGD and LoRa-APGD
inits           ["lora", "svd"]                  LoRa-PGD initialisations
steps           10                               steps of PGD-L2 and LoRa-PGD (the paper's code)
apgd_steps      100                              steps of APGD-CE and LoRa-APGD (APGD's standard)
n               1000                             first n test images
batch_size      250                              images per attack call (robustlr's results do not depend on it)
seed            0                                seed of every robustlr attack
checkpoint      "best"                           the run's ``best.pt`` or ``last.pt``
==============  ===============================  ===========================================================

``seconds`` is the wall time inside the attack calls on all ``n`` images: for robustlr's AutoAttack the sum over
its four stages (each on the points still robust), for the original the whole ``run_standard_evaluation`` call
(its clean pass and checks included).  :func:`suite_reading` (rendered under the table by ``robustlr results``)
states, from the table, how far each attack's robust accuracy is from AutoAttack's and at what time ratio.

Files: ``out/<run>/`` (the training run), ``out/<run>/suite/<cell>.json`` (one per cell, skipped when present
with the same settings; a failed cell leaves ``<cell>.status.json``).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import INITS
from ..evaluate import evaluate
from ..files import file_stem
from .attack_cells import Cell, read_cell, run_cell
from .experiment import Experiment
from .records import read_record, write_record
from .settings import choice, choices, eps_list, positive_int, rank_list, seed
from .training import CHECKPOINTS, attempt, finished_runs, load_run, read_status, train_runs

__all__ = ["SUITE_SCHEMA", "COMPARABLE_POINTS", "run_suite_table", "suite_table_rows", "suite_table_figures",
           "suite_reading"]

SUITE_SCHEMA = {
    "eps": ([0.5, 1.0, 1.5], eps_list),
    "ranks": ([0.1, 0.3], rank_list),
    "inits": (list(INITS), choices(INITS)),
    "steps": (10, positive_int),
    "apgd_steps": (100, positive_int),
    "n": (1000, positive_int),
    "batch_size": (250, positive_int),
    "seed": (0, seed),
    "checkpoint": ("best", choice(CHECKPOINTS)),
}
"""The ``[suite]`` table: key -> (default, check)."""

COMPARABLE_POINTS = 1.0
"""The reading calls an attack *comparable* to AutoAttack when its robust accuracy is at most this many points
(percent of the images) above AutoAttack's."""

PEER = "pyautoattack"
"""The original AutoAttack's package (Croce & Hein's code, MIT)."""

_SUITE_SETTINGS = ("n", "seed", "checkpoint")
_PEER_SETTINGS = ("n", "checkpoint", "batch_size")
"""What a stored suite cell was computed with (the original's results depend on its batches, robustlr's do not)."""
_SUITE_PAYLOAD = ("eps", "n", "clean", "robust_accuracy", "seconds")


@dataclass(frozen=True)
class SuiteCell:
    """One AutoAttack run at one ε: ``attack`` is ``"autoattack"`` (robustlr's) or ``"pyautoattack"``."""

    attack: str
    eps: float

    @property
    def key(self) -> str:
        return file_stem(f"{self.attack}_eps{self.eps:g}")

    @property
    def keys(self) -> tuple[str, ...]:
        return _PEER_SETTINGS if self.attack == PEER else _SUITE_SETTINGS


def _attack_cells(settings: dict[str, Any]) -> list[Cell]:
    """PGD-L2, LoRa-PGD per rank and init, LoRa-APGD per rank, APGD-CE (cheapest first)."""
    ranks = settings["ranks"]
    return [Cell("pgd-l2"), *(Cell("lora-pgd", init, rank) for rank in ranks for init in settings["inits"]),
            *(Cell("lora-apgd", None, rank) for rank in ranks), Cell("apgd-ce")]


def _cell_settings(cell: Cell, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings :func:`~robustlr.reproduce.attack_cells.run_cell` gets: ``steps`` is ``apgd_steps`` for the
    APGD attacks."""
    return {**settings, "steps": settings["apgd_steps"]} if cell.attack in ("lora-apgd", "apgd-ce") else settings


def _suite_cells(settings: dict[str, Any], peer: bool) -> list[SuiteCell]:
    attacks = ("autoattack", PEER) if peer else ("autoattack",)
    return [SuiteCell(attack, eps) for attack in attacks for eps in settings["eps"]]


def _peer_installed() -> bool:
    return importlib.util.find_spec(PEER) is not None


def _path(out: Path, run_id: str, key: str, suffix: str = ".json") -> Path:
    return out / run_id / "suite" / f"{key}{suffix}"


def _run_suite_cell(cell: SuiteCell, model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
                    path: Path) -> None:
    """Run AutoAttack (robustlr's or the original) at ``cell.eps`` and write its record to ``path``."""
    batch = settings["batch_size"]
    if cell.attack == PEER:
        from pyautoattack import AutoAttack

        peer = AutoAttack(model, norm="L2", eps=cell.eps, version="standard", seed=0, device=x.device)
        start = time.perf_counter()
        _, y_adv = peer.run_standard_evaluation(x, y, batch_size=batch)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            clean = torch.cat([model(part).argmax(dim=1) for part in x.split(batch)]) == y
        payload = {"clean": int(clean.sum()) / len(y), "robust_accuracy": int((y_adv == y).sum()) / len(y),
                   "seconds": seconds}
    else:
        result = evaluate(model, (x, y), eps_grid=[cell.eps], suite="autoattack", norm="l2", batch_size=batch,
                          progress=False)
        stages = result.stage_rows()
        robust = result.worst_at(cell.eps, norm="l2").robust_accuracy
        payload = {"clean": result.clean_accuracy, "robust_accuracy": robust,
                   "seconds": sum(stage["seconds"] for stage in stages), "stages": stages, "warnings": result.warnings}
    write_record(path, settings, cell.keys, {"cell": cell.__dict__, "eps": cell.eps, "n": len(y), **payload})


def run_suite_table(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> None:
    """Train the runs, then compute every missing cell on every finished run (the attacks, then AutoAttack)."""
    settings = exp.settings
    attacks, suites = _attack_cells(settings), _suite_cells(settings, _peer_installed())
    for state in train_runs(exp, out, only, progress):
        if state.status != "finished":
            continue
        run = next(r for r in exp.runs if r["id"] == state.run)
        todo: list[Cell | SuiteCell] = [c for c in attacks if read_cell(
            _path(out, run["id"], c.key), _cell_settings(c, settings)) is None]
        todo += [c for c in suites
                 if read_record(_path(out, run["id"], c.key), settings, c.keys, _SUITE_PAYLOAD) is None]
        if not todo:
            continue
        model, x, y = load_run(run, out, settings["checkpoint"], settings["n"])
        for cell in tqdm(todo, desc=f"{exp.name}: attacks on {run['id']}", disable=not progress):
            path = _path(out, run["id"], cell.key)
            if isinstance(cell, SuiteCell):
                work = lambda: _run_suite_cell(cell, model, x, y, settings, path)  # noqa: E731
            else:
                work = lambda: run_cell(cell, model, x, y, _cell_settings(cell, settings), path)  # noqa: E731
            attempt(_path(out, run["id"], cell.key, ".status.json"), work, f"{exp.name}: {run['id']} / {cell.key}")


def _row(run_id: str, attack: str, init: str | None, rank: int | None, steps: int | None,
         record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"model": run_id, "attack": attack, "init": init, "rank": rank, "steps": steps, "eps": result["eps"],
            "n": record["n"], "clean": record["clean"], "robust_accuracy": result["robust_accuracy"],
            "seconds": result["seconds"], "status": "ok"}


def _failed(run_id: str, attack: str, init: str | None, rank: int | float | None, failure: tuple[str, str]) -> dict:
    return {"model": run_id, "attack": attack, "init": init, "rank": rank, "status": failure[0], "error": failure[1]}


def suite_table_rows(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per (model, attack, init, rank, ε) computed with the current settings: clean and robust accuracy,
    seconds in the attack on all n images; one row per model or cell that failed or was skipped (the original
    AutoAttack's when pyautoattack is not installed)."""
    settings = exp.settings
    peer = _peer_installed()
    rows: list[dict[str, Any]] = []
    for run in finished_runs(exp, out, rows):
        run_id = run["id"]
        for cell in _attack_cells(settings):
            cell_settings = _cell_settings(cell, settings)
            record = read_cell(_path(out, run_id, cell.key), cell_settings)
            failure = read_status(_path(out, run_id, cell.key, ".status.json"))
            if record is not None:
                rows += [_row(run_id, cell.attack, cell.init, record["rank"], cell_settings["steps"], record, r)
                         for r in record["results"]]
            elif failure is not None:
                rows.append(_failed(run_id, cell.attack, cell.init, cell.rank, failure))
        for cell in _suite_cells(settings, peer):
            record = read_record(_path(out, run_id, cell.key), settings, cell.keys, _SUITE_PAYLOAD)
            failure = read_status(_path(out, run_id, cell.key, ".status.json"))
            if record is not None:
                rows.append(_row(run_id, cell.attack, None, None, None, record, record))
            elif failure is not None:
                rows.append(_failed(run_id, cell.attack, None, None, failure))
        if not peer:
            rows.append(_failed(run_id, PEER, None, None, ("skipped", f"{PEER} is not installed (pip install "
                                                                      f"--no-deps {PEER})")))
    return rows


def suite_table_figures(exp: Experiment, out: Path) -> list[Path]:
    """No figures: the reading (:func:`suite_reading`) states the comparison."""
    return []


def _label(row: dict[str, Any]) -> str:
    if row["attack"] == "lora-pgd":
        return f"LoRa-PGD {row['init']} r={row['rank']}"
    if row["attack"] == "lora-apgd":
        return f"LoRa-APGD r={row['rank']}"
    return {"pgd-l2": "PGD-L2", "apgd-ce": "APGD-CE"}.get(row["attack"], row["attack"])


def _points(row: dict[str, Any], reference: dict[str, Any]) -> float:
    return 100 * (row["robust_accuracy"] - reference["robust_accuracy"])


def _ratio(row: dict[str, Any], reference: dict[str, Any]) -> float:
    return row["seconds"] / reference["seconds"] if reference["seconds"] > 0 else float("inf")


def suite_reading(rows: list[dict[str, Any]]) -> str:
    """The reading of a suite table, computed from its rows: per (model, ε), every attack's robust accuracy minus
    AutoAttack's (points) and its time over AutoAttack's, and whether LoRa-PGD is *comparable* (at most
    :data:`COMPARABLE_POINTS` above) *at a fraction of the time* (ratio < 1).  AutoAttack is the original
    (pyautoattack) where the table has it, else robustlr's."""
    ok = [r for r in rows if r.get("status") == "ok"]
    cells = list(dict.fromkeys((r["model"], r["eps"]) for r in ok))
    original = any(r["attack"] == PEER for r in ok)
    lines = ["**Reading (computed from the table by `robustlr results`).** AutoAttack is "
             + ("the original (pyautoattack, standard version); robustlr's suite is shown next to it. " if original
                else "robustlr's suite (the original was not run). ")
             + "Points: robust accuracy minus AutoAttack's, in percent of the images (negative: the attack is "
             f"stronger); time: its seconds over AutoAttack's. *Comparable* means at most {COMPARABLE_POINTS:g} point "
             "above AutoAttack.", "",
             "| model | ε | AutoAttack | robustlr's AutoAttack | best LoRa-PGD | points | time | LoRa-APGD | points "
             "| time | APGD-CE points | PGD-L2 points |", "|---|---:|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    verdicts, gaps, ratios = [], [], []
    for model, eps in cells:
        at = {(r["attack"], r["init"], r["rank"]): r for r in ok if (r["model"], r["eps"]) == (model, eps)}
        ours, peer = at.get(("autoattack", None, None)), at.get((PEER, None, None))
        reference = peer or ours
        lora = [r for key, r in at.items() if key[0] == "lora-pgd"]
        if reference is None or not lora:
            continue
        best = min(lora, key=lambda r: (r["robust_accuracy"], r["seconds"]))
        apgd_lora = min((r for key, r in at.items() if key[0] == "lora-apgd"), default=None,
                        key=lambda r: r["robust_accuracy"])
        gaps += [_points(r, reference) for r in lora]
        ratios += [_ratio(r, reference) for r in lora]
        verdicts.append(_points(best, reference) <= COMPARABLE_POINTS and _ratio(best, reference) < 1)

        def shown(row: dict[str, Any] | None, what: str) -> str:
            if row is None:
                return "—"
            return {"acc": f"{row['robust_accuracy']:.3f} ({row['seconds']:.0f} s)", "label": _label(row),
                    "points": f"{_points(row, reference):+.1f}", "time": f"{_ratio(row, reference):.3f}"}[what]

        lines.append(f"| {model} | {eps:g} | {shown(reference, 'acc')}{'' if peer else ' (robustlr)'} | "
                     f"{shown(ours, 'acc')} | {shown(best, 'label')}: {best['robust_accuracy']:.3f} | "
                     f"{shown(best, 'points')} | {shown(best, 'time')} | {shown(apgd_lora, 'label')} | "
                     f"{shown(apgd_lora, 'points')} | {shown(apgd_lora, 'time')} | "
                     f"{shown(at.get(('apgd-ce', None, None)), 'points')} | "
                     f"{shown(at.get(('pgd-l2', None, None)), 'points')} |")
    if not verdicts:
        return "\n".join(lines[:1] + ["", "(no (model, ε) with both AutoAttack and LoRa-PGD rows yet)"])
    held = sum(verdicts)
    claim = "holds" if held == len(verdicts) else "does not hold" if held == 0 else "holds only in part"
    lines += ["", f"- \"Comparable to AutoAttack at a fraction of the time\" {claim} here: the best LoRa-PGD variant "
              f"is within {COMPARABLE_POINTS:g} point of AutoAttack at a time ratio below 1 in {held} of "
              f"{len(verdicts)} (model, ε) cells. Over every LoRa-PGD variant and cell the robust accuracy is "
              f"{min(gaps):+.1f} to {max(gaps):+.1f} points from AutoAttack's, at "
              f"{min(ratios):.3f}–{max(ratios):.3f} of its time."]
    return "\n".join(lines)
