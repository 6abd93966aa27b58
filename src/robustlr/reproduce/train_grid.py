"""``kind = "train-grid"``: train every run of an experiment (resumable), then tabulate their summaries.

Used for the CondLR comparison (Savostianova et al., NeurIPS 2023, Tables 1 and 5) and for adversarial
training with LoRa-PGD (LoRa-PGD brief §3).  The runs' final evaluations (FGSM and PGD-L∞ over ``eval_eps``)
are the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report import plot_lines
from ..train import train_seconds
from .experiment import Experiment
from .records import read_object
from .training import run_state, state_row, train_runs

__all__ = ["run_train_grid", "train_grid_rows", "train_grid_figures"]


def run_train_grid(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> None:
    """Train each run into ``out/<id>`` (see :func:`robustlr.reproduce.training.train_runs`)."""
    train_runs(exp, out, only, progress)


def _acc(evaluation: dict, attack: str) -> dict[float, float]:
    return {r["eps"]: r["robust_accuracy"] for r in evaluation["robust_accuracy"] if r["attack"] == attack}


def _summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run, checked for what the table reads (``ValueError`` naming it)."""
    path = run_dir / "summary.json"
    summary = read_object(path, "run summary", ("evaluation", "final_metrics", "epochs_completed"))
    last = summary["evaluation"].get("last") if isinstance(summary["evaluation"], dict) else None
    if not (isinstance(last, dict) and "clean_accuracy" in last and isinstance(last.get("robust_accuracy"), list)
            and isinstance(summary["final_metrics"], dict)):
        raise ValueError(f"run summary {str(path)!r}: expected the summary that training writes (evaluation.last "
                         f"with clean_accuracy and robust_accuracy, final_metrics); got evaluation = "
                         f"{summary['evaluation']!r:.120}")
    return summary


def _finished_row(run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    summary = _summary(run_dir)
    last = summary["evaluation"]["last"]
    final = summary["final_metrics"]
    seconds = train_seconds(run_dir)
    row: dict[str, Any] = {
        "run": run["id"], "method": run.get("method"),
        "rank": run.get("rank") if run.get("method") in ("lowrank", "condlr") else None,
        "tau": run.get("tau") if run.get("method") == "condlr" else None,
        "adv": run.get("adv"), "adv_rank": run.get("adv_rank"),
        "epochs": summary["epochs_completed"], "clean": last["clean_accuracy"],
        "kappa_max": final.get("kappa_max"), "param_reduction": summary.get("compression", {}).get("param_reduction"),
        "rank_reduction": summary.get("compression", {}).get("rank_reduction"),
        "epoch_seconds": seconds / summary["epochs_completed"], "train_seconds": seconds,
    }
    for attack in ("fgsm", "pgd-linf"):
        for eps, acc in sorted(_acc(last, attack).items()):
            if eps > 0:
                row[f"{attack}@{eps:g}"] = acc
    return row


def train_grid_rows(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per attempted run: for a finished one clean and robust accuracy (last model), κ, compression,
    time; for a failed or skipped one its status and error.  Runs not attempted yet are left out."""
    rows = []
    for run in exp.runs:
        state = run_state(out, run["id"])
        if state.status == "finished":
            rows.append({**_finished_row(run, out / run["id"]), "status": state.status})
        elif state.status != "pending":
            rows.append(state_row(state))
    return rows


def train_grid_figures(exp: Experiment, out: Path) -> list[Path]:
    """Accuracy vs ε under FGSM and under PGD-L∞, one line per finished run (last model): ``<attack>.png``."""
    summaries = {r["id"]: _summary(out / r["id"]) for r in exp.runs if run_state(out, r["id"]).status == "finished"}
    paths = []
    for attack in ("fgsm", "pgd-linf"):
        lines = {}
        for run_id, summary in summaries.items():
            points = sorted(_acc(summary["evaluation"]["last"], attack).items())
            if points:
                lines[run_id] = ([e for e, _ in points], [a for _, a in points])
        if lines:
            paths.append(plot_lines(lines, out / f"{attack}.png", xlabel="ε (L∞)", ylabel="test accuracy",
                                    title=f"{exp.name}: accuracy under {attack}"))
    return paths
