"""Files of a training run: the resumable state (``resume.pt``), the weights (``best.pt``, ``last.pt``) and
rebuilding a trained model from its checkpoint.

``resume.pt`` holds everything an exact continuation needs: the config, the model, optimiser (CondLR state
included) and scheduler state dicts, the global torch RNG state of every process (dropout; on a CUDA run also
the state of the process's own GPU, never of the others), the number of processes, the loop counters
(completed epochs, batches done in the current epoch and that epoch's running sums), the best validation score so far, the metrics history, and the
``extra`` states: the warm-start bank of adversarial training and the float16 gradient scaler. The data order
and the adversarial examples need no state: they are drawn from seeds derived from ``(seed, epoch, batch)``.
In a distributed run rank 0 writes the file and every process restores it. Every file is written atomically.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from robustlr.checks import check_device
from robustlr.files import atomic_write_bytes, read_json, read_torch
from robustlr.models import load_checkpoint, model_from_sidecar, save_checkpoint, sidecar_path

from .config import TrainConfig
from .methods import build_model
from .metrics_log import json_ready
from .step import Tally

__all__ = ["RESUME_FORMAT", "RunPaths", "TrainState", "load_trained", "read_resume", "restore", "rng_state",
           "save_resume", "save_weights"]

RESUME_FORMAT = 2
"""Version of the ``resume.pt`` layout."""

_RESUME_KEYS = ("config", "progress", "model", "optimizer", "scheduler", "world_size", "rng", "extra")


@dataclass(frozen=True)
class RunPaths:
    """Where a run in directory ``out`` keeps its files."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def metrics_csv(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def metrics_json(self) -> Path:
        return self.out / "metrics.json"

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    @property
    def best(self) -> Path:
        return self.out / "best.pt"

    @property
    def resume(self) -> Path:
        return self.out / "resume.pt"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def evaluation(self, which: str) -> Path:
        """Report directory of the final evaluation of the ``"last"`` or ``"best"`` model."""
        return self.out / f"eval-{which}"


@dataclass
class TrainState:
    """Progress of the training loop: ``epoch`` epochs completed, then ``batch`` batches of the next one
    (summed in ``tally``); the best validation accuracy so far (``-inf`` before the first epoch): clean, or
    robust under the evaluation attack with ``select_by="robust"``."""

    epoch: int = 0
    batch: int = 0
    tally: Tally = field(default_factory=Tally)
    best_epoch: int = 0
    best_val_accuracy: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global torch RNG states: the CPU's, and (``cuda_device``) the state of its own CUDA device
    when ``device`` is one (``None`` otherwise). Only that device is touched: asking every GPU for its state
    (``get_rng_state_all``) would open a CUDA context on every GPU from every process."""
    return {
        "torch": torch.get_rng_state(),
        "cuda_device": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_state` on ``device``. Files of earlier versions hold ``cuda``, the list of the states of
    every GPU (empty on a machine without CUDA): the entry of ``device``'s index is restored.

    Raises:
        ValueError: if such a list holds states but none for ``device`` (written on a machine with fewer GPUs).
    """
    torch.set_rng_state(state["torch"])
    if device.type != "cuda":
        return
    index = torch.cuda.current_device() if device.index is None else device.index
    if "cuda_device" in state:
        cuda = state["cuda_device"]
    else:  # an earlier version's list of every GPU's state
        every = state["cuda"]
        if every and index >= len(every):
            raise ValueError(f"resume: the stored CUDA RNG states cover {len(every)} GPU(s) per process, so "
                             f"there is none for {device}; resume on a device among cuda:0..cuda:{len(every) - 1}")
        cuda = every[index] if every else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def save_resume(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    state: TrainState,
    *,
    rng: list[dict[str, Any]],
    extra: dict[str, Any],
) -> None:
    """Write the resumable state of the run to ``path`` atomically (call it at a batch or epoch boundary).

    ``rng`` holds :func:`rng_state` of every process (rank order; its length is the number of processes);
    ``extra`` the states of the adversarial transform and the gradient scaler.
    """
    payload = {
        "format": RESUME_FORMAT,
        "config": config.to_dict(),
        "progress": asdict(state),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "world_size": len(rng),
        "rng": rng,
        "extra": extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_resume(path: Path) -> dict[str, Any]:
    """The payload of a ``resume.pt`` (tensors on the CPU).

    Raises:
        ValueError: naming the file, if it is missing, empty, truncated or corrupt
            (:func:`~robustlr.files.read_torch`), of another format or lacks a part of the state.
    """
    if not path.is_file():
        raise ValueError(f"resume: {str(path)!r} does not exist, so there is no run to resume in {str(path.parent)!r}")
    payload = read_torch(path, "resume state")
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"resume state {str(path)!r} must be of format {RESUME_FORMAT}; got {found!r}")
    missing = [key for key in _RESUME_KEYS if key not in payload]
    if missing:
        raise ValueError(f"resume state {str(path)!r} lacks {missing}; it was not written by robustlr train")
    return payload


def restore(
    payload: dict[str, Any], model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, rank: int = 0,
    device: torch.device = torch.device("cpu"),
) -> TrainState:
    """Load a :func:`read_resume` payload into freshly built objects, set process ``rank``'s RNG states (the
    CUDA one on ``device``, this process's device), return the progress.

    Raises:
        ValueError: if the stored CUDA RNG states have none for ``device`` (see :func:`_set_rng_state`).
    """
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"][rank], device)
    progress = dict(payload["progress"])
    progress["tally"] = Tally(**progress["tally"])
    return TrainState(**progress)


def save_weights(path: Path, model: nn.Module, config: TrainConfig, record: dict[str, Any]) -> None:
    """Write ``model``'s state dict and its sidecar (``train_config``, ``epoch``, ``metrics``) atomically."""
    meta = {"train_config": config.to_dict(), "epoch": record["epoch"], "metrics": json_ready(record)}
    save_checkpoint(path, model, meta)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a ``best.pt`` / ``last.pt`` written by :func:`~robustlr.train.train` (low-rank
    structure included) and load its weights; returns ``(model in eval mode on device, sidecar)``.

    Raises:
        ValueError: before reading anything if ``device`` is not one this machine has
            (:func:`robustlr.checks.check_device`); if the file or its sidecar is missing, damaged (naming the
            file and what is wrong), or the sidecar was not written by training.
    """
    device = check_device("device", device)
    path = Path(path)
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise ValueError(f"path must be a checkpoint written by robustlr train, with its sidecar {sidecar.name}; "
                         f"got {str(path)!r}")
    meta = read_json(sidecar, "sidecar")
    if not isinstance(meta.get("train_config"), dict):
        raise ValueError(f"path must be a checkpoint written by robustlr train; sidecar {str(sidecar)!r} has no "
                         f"train_config object (got {meta.get('train_config')!r})")
    try:
        config = TrainConfig.from_stored(meta["train_config"])
    except ValueError as error:
        raise ValueError(f"sidecar {str(sidecar)!r}: train_config: {error}") from None
    model = model_from_sidecar(meta, sidecar, lambda args: build_model(config, args))
    model, meta = load_checkpoint(path, model)
    return model.to(device).eval(), meta
