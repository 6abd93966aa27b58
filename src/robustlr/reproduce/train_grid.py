"""``kind = "train-grid"``: train every run of an experiment (resumable), then tabulate their summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..report import plot_lines
from ..train import TrainConfig, train
from .configs import Experiment

__all__ = ["run_train_grid", "train_grid_rows", "train_grid_figures"]


def _config(run: dict[str, Any], out: Path) -> TrainConfig:
    return TrainConfig.from_dict({**{k: v for k, v in run.items() if k != "id"}, "out": str(out / run["id"])})


def run_train_grid(exp: Experiment, out: Path, only: list[str] | None = None, progress: bool = True) -> None:
    """Train each run into ``out/<id>``: a finished run (``summary.json``) is skipped, an interrupted one
    (``resume.pt``) is resumed, so the whole experiment can be stopped and restarted without losing work."""
    runs = [r for r in exp.runs if not only or r["id"] in only]
    unknown = sorted(set(only or []) - {r["id"] for r in exp.runs})
    if unknown:
        raise ValueError(f"--only must name runs of {exp.name} {[r['id'] for r in exp.runs]}, got {unknown}")
    for run in tqdm(runs, desc=exp.name, disable=not progress):
        run_dir = out / run["id"]
        if (run_dir / "summary.json").is_file():
            continue
        train(_config(run, out), progress=progress, resume=(run_dir / "resume.pt").is_file())


def _acc(evaluation: dict, attack: str) -> dict[float, float]:
    return {r["eps"]: r["robust_accuracy"] for r in evaluation["robust_accuracy"] if r["attack"] == attack}


def train_grid_rows(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per finished run: clean and robust accuracy (last model), κ, compression, time."""
    rows = []
    for run in exp.runs:
        run_dir = out / run["id"]
        if not (run_dir / "summary.json").is_file():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        last = summary["evaluation"]["last"]
        final = summary["final_metrics"]
        row: dict[str, Any] = {
            "run": run["id"], "method": run.get("method"), "rank": run.get("rank") if run.get("method") in ("lowrank", "condlr") else None,
            "tau": run.get("tau") if run.get("method") == "condlr" else None,
            "adv": run.get("adv"), "adv_rank": run.get("adv_rank"),
            "epochs": summary["epochs_completed"], "clean": last["clean_accuracy"],
            "kappa_max": final.get("kappa_max"), "param_reduction": summary.get("compression", {}).get("param_reduction"),
            "rank_reduction": summary.get("compression", {}).get("rank_reduction"),
            "epoch_seconds": sum(h["seconds"] for h in history) / len(history),
            "train_seconds": sum(h["seconds"] for h in history),
        }
        for attack in ("fgsm", "pgd-linf"):
            for eps, acc in sorted(_acc(last, attack).items()):
                if eps > 0:
                    row[f"{attack}@{eps:g}"] = acc
        rows.append(row)
    return rows


def train_grid_figures(exp: Experiment, out: Path) -> list[Path]:
    """Accuracy vs ε under FGSM and under PGD-L∞, one line per finished run (last model): ``<attack>.png``."""
    summaries = {r["id"]: json.loads((out / r["id"] / "summary.json").read_text())
                 for r in exp.runs if (out / r["id"] / "summary.json").is_file()}
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
