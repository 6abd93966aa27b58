"""The demo's steps: train (resumably), attack over ε grids, decompose PGD perturbations, write the report.

Fashion-MNIST is provisioned first (:func:`robustlr.data.provision`: found locally, else the Debian package
when run as root, else the checksum-verified download), so the demo runs on a bare machine; a ``data_root``
the user names is the only place looked in.  Every model is trained by :func:`robustlr.train.train` into
``out/<model>``; a finished model (its ``summary.json``) is reused and an interrupted one resumed from its
``resume.pt``, so stopping the demo (Ctrl-C) loses at most the current batch: running it again continues.  Each model is attacked with attacks built on itself: FGSM and
PGD-L∞ over ``settings.eps_linf``, PGD-L2 and LoRa-PGD (Savostianova et al.'s companion attack; see
:class:`robustlr.attacks.LoRaPGD`) over ``settings.eps_l2``; L∞ and L2 are evaluated separately, so each
worst case combines attacks of one threat model only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analysis.conditioning import layer_condition_numbers
from ..attacks import build_attack
from ..data import load_dataset, provision
from ..evaluate import EvaluationResult, at_eps, evaluate
from ..files import read_json
from ..evaluation.spectrum import SpectrumStats, perturbation_spectrum
from ..report import write_report
from ..train import NonFiniteLossError, TrainConfig, TrainingInterrupted, ensure_trained, load_trained, train_seconds
from ..train.signals import signal_name
from .report import write_demo_report
from .results import DemoResult, ModelResult
from .settings import MODELS, NORMS, DemoSettings

__all__ = ["run_demo"]


def _train(config: TrainConfig, progress: bool) -> tuple[nn.Module, dict[str, Any], float]:
    """Train (or resume, or reuse) the run of ``config``; return its last model, ``summary.json`` and the
    seconds its epochs took.

    Raises:
        TrainingInterrupted: on SIGINT/SIGTERM, saying where the state is kept and that running the demo again
            continues (the trainer's own message would ask for ``--resume``, which the demo does not take).
    """
    try:
        ensure_trained(config, progress)
    except TrainingInterrupted as stop:
        raise TrainingInterrupted(
            stop.signum,
            f"demo stopped by {signal_name(stop.signum)} while training {config.out}; its state is saved there",
        ) from None
    out = Path(config.out)
    model, _ = load_trained(out / "last.pt", device=config.device)
    return model, read_json(out / "summary.json", "run summary"), train_seconds(out)


def _attack(model: nn.Module, settings: DemoSettings, x: torch.Tensor, y: torch.Tensor, out: Path,
            title: str, progress: bool) -> dict[str, EvaluationResult]:
    """Evaluate ``model`` under the L∞ and the L2 attacks over their grids; write one report per norm."""
    grids = {"linf": settings.eps_linf, "l2": settings.eps_l2}
    results = {}
    for norm, names in NORMS.items():
        attacks = {
            name: at_eps(lambda eps, name=name: build_attack(
                name, model, eps, steps=settings.steps, seed=settings.seed,
                rank=settings.lora_rank if name == "lora-pgd" else None))
            for name in names
        }
        results[norm] = evaluate(model, (x, y), attacks, grids[norm], progress=progress)
        write_report(results[norm], out / f"attacks-{norm}", title=f"{title}, {norm.upper()} attacks")
    return results


def _spectrum(model: nn.Module, settings: DemoSettings, x: torch.Tensor, y: torch.Tensor,
              progress: bool) -> list[SpectrumStats]:
    """Singular spectra of PGD-L2 and PGD-L∞ perturbations at the summary budgets (LoRa-PGD brief §2)."""
    attacks = {
        f"pgd-l2 ε={settings.summary_l2:g}": build_attack("pgd-l2", model, settings.summary_l2, steps=settings.steps,
                                                          seed=settings.seed),
        f"pgd-linf ε={settings.summary_linf:g}": build_attack("pgd-linf", model, settings.summary_linf,
                                                              steps=settings.steps, seed=settings.seed),
    }
    return perturbation_spectrum(model, x, y, attacks, progress=progress)


def run_demo(settings: DemoSettings, out: Path, *, data_root: str | None = None, download: bool = True,
             progress: bool = True) -> DemoResult:
    """Train the three networks of :data:`~robustlr.demo.settings.MODELS`, measure them, write ``out/report.md``.

    Fashion-MNIST comes from ``data_root`` alone when it is given, else it is provisioned
    (:func:`robustlr.data.provision`; ``download=False`` leaves out the download step) before anything else.

    Raises:
        DataRootError, NotADirectoryError: if ``data_root`` does not hold Fashion-MNIST (naming it).
        DatasetNotFoundError: if the data is nowhere and could not be installed or downloaded (each way tried,
            and why it failed, is in the message).

    Returns the measurements, also written to ``out/demo.json`` with the report's tables and figures
    (:func:`robustlr.demo.report.write_demo_report`).  A network whose training loss becomes non-finite is
    reported as diverged (with the trainer's message) and left out of the tables.
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provision("fashion-mnist", root=data_root, download=download, progress=progress)
    test = load_dataset("fashion-mnist", "test", root=data_root)
    x, y = (t.to(settings.device) for t in test[: settings.n_test])
    models, failed = [], {}
    for i, name in enumerate(MODELS, 1):
        config = settings.train_config(name, out, data_root)
        tqdm.write(f"demo [{i}/{len(MODELS)}] {name}: train (or reuse {config.out}), attack, decompose perturbations")
        try:
            model, summary, seconds = _train(config, progress)
        except NonFiniteLossError as error:  # a diverged network is a result too (vanilla low-rank can diverge)
            failed[name] = str(error)
            continue
        evaluations = _attack(model, settings, x, y, out / name, f"demo: {name} LeNet5", progress)
        spectrum = _spectrum(model, settings, x[: settings.n_spectrum], y[: settings.n_spectrum], progress)
        models.append(ModelResult(name, config, summary, seconds, evaluations, layer_condition_numbers(model),
                                  spectrum))
    if not models:
        raise ValueError(f"every network diverged; allowed: settings under which at least one trains ({failed})")
    result = DemoResult(settings, models, out, failed)
    write_demo_report(result, started)
    return result
