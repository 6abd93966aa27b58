"""``kind = "attack-table"``: PGD-L2 vs LoRa-PGD vs rank-projected PGD on models the experiment trains.

The LoRa-PGD paper's comparison (LoRa-PGD brief §4.1: robust accuracy of PGD and of LoRa-PGD with both
initialisations at rank fractions 0.1–0.5, time per attack; §5: the attack's state, 2r/n of PGD's; §2.3: PGD
truncated to rank r), on the ``[[runs]]`` of the config, which are trained first (resumably, shared with the
other kinds: :mod:`robustlr.reproduce.training`).  The attacks are listed in :mod:`robustlr.reproduce.attack_cells`;
the ``[attack]`` table sets them:

==============  ===============================  ===========================================================
key             default                          meaning
==============  ===============================  ===========================================================
eps             [0.5]                            L2 budgets ε > 0 (images in [0, 1])
ranks           [0.1, 0.2, 0.3, 0.4, 0.5]        per-channel ranks: fractions of the image side, or ints
inits           ["lora", "svd"]                  LoRa-PGD initialisations
steps           10                               steps of every attack (the paper's code)
n               1000                             first n test images
batch_size      250                              images per attack call (results do not depend on it)
seed            0                                seed of the random starts and of LoRa-PGD's U₀
checkpoint      "best"                           the run's ``best.pt`` (model selection) or ``last.pt``
==============  ===============================  ===========================================================

Files: ``out/<run>/`` (the training run), ``out/<run>/attacks/<cell>.json`` (one per cell, skipped when present
with the same settings; a failed cell leaves ``<cell>.status.json``), ``rank_<run>_eps<ε>.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..attacks import INITS
from ..files import file_stem
from ..report import plot_lines
from .attack_cells import Cell, cells, read_cell, run_cell
from .experiment import Experiment
from .settings import choice, choices, eps_list, positive_int, rank_list, seed
from .training import CHECKPOINTS, attempt, finished_runs, load_run, read_status, train_runs

__all__ = ["ATTACK_SCHEMA", "run_attack_table", "attack_table_rows", "attack_table_figures"]

ATTACK_SCHEMA = {
    "eps": ([0.5], eps_list),
    "ranks": ([0.1, 0.2, 0.3, 0.4, 0.5], rank_list),
    "inits": (list(INITS), choices(INITS)),
    "steps": (10, positive_int),
    "n": (1000, positive_int),
    "batch_size": (250, positive_int),
    "seed": (0, seed),
    "checkpoint": ("best", choice(CHECKPOINTS)),
}
"""The ``[attack]`` table: key -> (default, check)."""

_LABELS = {("lora-pgd", "lora"): "LoRa-PGD (lora init)", ("lora-pgd", "svd"): "LoRa-PGD (svd init)",
           ("rank-pgd", None): "PGD projected to rank r"}


def _cell_path(out: Path, run_id: str, cell: Cell) -> Path:
    return out / run_id / "attacks" / f"{cell.key}.json"


def _status_path(out: Path, run_id: str, cell: Cell) -> Path:
    return out / run_id / "attacks" / f"{cell.key}.status.json"


def run_attack_table(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> None:
    """Train the runs, then evaluate every missing cell on every finished run."""
    settings = exp.settings
    grid = cells(settings["ranks"], settings["inits"])
    for state in train_runs(exp, out, only, progress):
        if state.status != "finished":
            continue
        run = next(r for r in exp.runs if r["id"] == state.run)
        todo = [c for c in grid if read_cell(_cell_path(out, run["id"], c), settings) is None]
        if not todo:
            continue
        model, x, y = load_run(run, out, settings["checkpoint"], settings["n"])
        for cell in tqdm(todo, desc=f"{exp.name}: attacks on {run['id']}", disable=not progress):
            path = _cell_path(out, run["id"], cell)
            attempt(_status_path(out, run["id"], cell), lambda: run_cell(cell, model, x, y, settings, path),
                    f"{exp.name}: {run['id']} / {cell.key}")


def _cell_rows(run_id: str, cell: Cell, record: dict[str, Any], pgd_bytes: int | None) -> list[dict[str, Any]]:
    rank = record["rank"]
    return [{
        "model": run_id, "attack": cell.attack, "init": cell.init, "rank": rank,
        "rank/n": None if rank is None else rank / record["side"], "eps": r["eps"], "n": record["n"],
        "clean": record["clean"], "robust_accuracy": r["robust_accuracy"], "seconds": r["seconds"],
        "state_bytes": record["state_bytes"],
        "state_ratio": None if pgd_bytes is None else record["state_bytes"] / pgd_bytes,
        "mean_l2": r["mean_l2"], "mean_nuclear": r["mean_nuclear"], "status": "ok",
    } for r in record["results"]]


def attack_table_rows(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per (model, attack, init, rank, ε) computed with the current settings: clean and robust
    accuracy, seconds in the attack (all n images), the attack's state in bytes per image and as a fraction of
    PGD's, mean ‖δ‖₂ and mean nuclear norm; one row per model or cell that failed or was skipped."""
    rows: list[dict[str, Any]] = []
    for run in finished_runs(exp, out, rows):
        grid = cells(exp.settings["ranks"], exp.settings["inits"])
        records = {c: read_cell(_cell_path(out, run["id"], c), exp.settings) for c in grid}
        pgd = records[grid[0]]
        for cell, record in records.items():
            failure = read_status(_status_path(out, run["id"], cell))
            if record is not None:
                rows += _cell_rows(run["id"], cell, record, None if pgd is None else pgd["state_bytes"])
            elif failure is not None:
                rows.append({"model": run["id"], "attack": cell.attack, "init": cell.init, "rank": cell.rank,
                             "status": failure[0], "error": failure[1]})
    return rows


def attack_table_figures(exp: Experiment, out: Path) -> list[Path]:
    """Per finished model and ε: robust accuracy vs the rank r for LoRa-PGD (each init) and rank-projected PGD,
    with full-rank PGD as a flat line (``rank_<model>_eps<ε>.png``)."""
    rows = [r for r in attack_table_rows(exp, out) if r["status"] == "ok"]
    paths = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for eps in sorted({r["eps"] for r in rows if r["model"] == model}):
            at = [r for r in rows if r["model"] == model and r["eps"] == eps]
            ranks = sorted({r["rank"] for r in at if r["rank"] is not None})
            lines = {}
            for (attack, init), label in _LABELS.items():
                points = sorted((r["rank"], r["robust_accuracy"]) for r in at
                                if (r["attack"], r["init"]) == (attack, init))
                if points:
                    lines[label] = ([p[0] for p in points], [p[1] for p in points])
            pgd = [r["robust_accuracy"] for r in at if r["attack"] == "pgd-l2"]
            if pgd and ranks:
                lines["PGD (full rank)"] = (ranks, pgd * len(ranks))
            if lines:
                paths.append(plot_lines(lines, out / f"{file_stem(f'rank_{model}_eps{eps:g}')}.png",
                                        xlabel="rank r per channel", ylabel="robust accuracy", unit_interval=False,
                                        title=f"{exp.name}: {model}, L2 ε = {eps:g} (clean {at[0]['clean']:.3f})"))
    return paths
