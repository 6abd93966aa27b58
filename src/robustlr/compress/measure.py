"""What compress measures on the dense and on the low-rank model: clean and robust accuracy under the same
attacks, and the inference latency on the data's input shape (the condition numbers are
:func:`robustlr.analysis.layer_condition_numbers`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustlr.attacks import RANKED_ATTACKS, build_attack
from robustlr.data import ImageDataset
from robustlr.evaluate import EvaluationResult, at_eps, evaluate
from robustlr.modes import eval_mode

from .settings import CompressSettings

__all__ = ["evaluate_model", "evaluation_summary", "latency_ratio"]


def evaluate_model(model: nn.Module, test: ImageDataset, settings: CompressSettings,
                   progress: bool) -> EvaluationResult:
    """Clean and robust accuracy of ``model`` on the first ``eval_n`` test images (0: all) under every attack of
    ``settings`` at every ε of its grid, each attack built on ``model`` itself with the run's seed."""
    attacks = {
        name: at_eps(lambda eps, name=name: build_attack(
            name, model, eps, steps=settings.eval_steps, seed=settings.seed,
            rank=settings.attack_rank if name in RANKED_ATTACKS else None))
        for name in settings.attacks
    }
    n = min(settings.eval_n, len(test)) or len(test)
    return evaluate(model, test.subset(range(n)), attacks, settings.eps, batch_size=settings.eval_batch_size,
                    device=settings.device, progress=progress)


def evaluation_summary(result: EvaluationResult) -> dict[str, Any]:
    """The numbers of ``result`` the before/after table uses: ``n``, ``clean_accuracy``, ``robust`` (attack, ε,
    robust accuracy), ``worst_case`` (ε, norm, robust accuracy), ``seconds`` and ``warnings``."""
    return {
        "n": result.n,
        "clean_accuracy": result.clean_accuracy,
        "robust": [{"attack": row["attack"], "eps": row["eps"], "robust_accuracy": row["robust_accuracy"]}
                   for row in result.rows()],
        "worst_case": [{"eps": worst.eps, "norm": worst.norm, "robust_accuracy": worst.robust_accuracy}
                       for worst in result.worst_case],
        "seconds": result.seconds,
        "warnings": list(result.warnings),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_ratio(dense: nn.Module, lowrank: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one forward pass of each model on the batch ``x`` (eval mode, no autograd), timed in
    turn (dense, low-rank, dense, …) after one warm-up pass each so that both see the same machine load, and
    their ratio ``lowrank_seconds / dense_seconds``."""
    models: dict[str, nn.Module] = {"dense": dense, "lowrank": lowrank}
    times: dict[str, list[float]] = {name: [] for name in models}

    def timed(model: nn.Module) -> Callable[[], float]:
        def run() -> float:
            _sync(x.device)
            tic = time.perf_counter()
            model(x)
            _sync(x.device)
            return time.perf_counter() - tic

        return run

    runs = {name: timed(model) for name, model in models.items()}
    with eval_mode(dense), eval_mode(lowrank), torch.inference_mode():
        for run in runs.values():
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(run())
    dense_seconds, lowrank_seconds = (statistics.median(times[name]) for name in models)
    return {"dense_seconds": dense_seconds, "lowrank_seconds": lowrank_seconds, "batch": x.shape[0],
            "repeats": repeats, "ratio": lowrank_seconds / dense_seconds}
