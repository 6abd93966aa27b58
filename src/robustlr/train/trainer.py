"""``train``: a full training run with per-epoch metrics, best/last checkpoints, exact resume, graceful stops
and the final robustness evaluation of both the last and the best model.

Files in ``config.out``: ``config.json``, ``metrics.csv``, ``metrics.json``, ``last.pt`` and ``best.pt``
(state dicts with JSON sidecars; rebuild with :func:`~robustlr.train.load_trained`), ``resume.pt``,
``eval-last/`` and ``eval-best/`` (evaluation reports) and ``summary.json``.

A run builds ``config.model`` with ``config.method``'s layers and loads ``config.data``, or starts from a given model
and given datasets (``train(config, model=..., data=(train, test))``: how ``robustlr compress`` fine-tunes a trained
network converted to low rank).

Reproducibility: the model is initialised after ``torch.manual_seed(seed)``, the validation split is seeded
with ``seed``, epoch ``e`` shuffles (and augments) with a generator seeded by ``seed · 1000003 + e``, the
adversarial examples of batch ``b`` are seeded by ``(seed, e, b)``, and ``resume.pt`` stores every other piece
of state (see :mod:`robustlr.train.checkpointing`), so a run resumed after a crash ends with the same weights,
bit for bit on the CPU, as an uninterrupted one.

Distributed runs (``torchrun`` or ``robustlr train --nproc N``; :mod:`robustlr.train.distributed`): the model is
wrapped in DDP, every process fetches its block of each global batch (:mod:`robustlr.train.batches`) and attacks
it, the step is the single-process step on the global batch (:mod:`robustlr.train.step`), the replicas are
checked identical every epoch (:mod:`robustlr.train.replicas`), validation and the final evaluation are
sharded, and rank 0 alone logs and writes files. A stop signal reaching any process stops all of them at the
same batch boundary; a resumed run must use the same number of processes.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlr.checks import check_device
from robustlr.data import ImageDataset, load_dataset, train_val_split
from robustlr.evaluate import EvaluationResult
from robustlr.files import read_torch
from robustlr.report import atomic_write_text, write_report

from .adversarial import AdversarialTraining
from .batches import TrainBatches
from .checkpointing import RunPaths, TrainState, read_resume, restore, rng_state, save_resume, save_weights
from .config import RESUME_MAY_DIFFER, TrainConfig, config_differences
from .distributed import Distributed
from .final_eval import evaluate_trained
from .methods import build_model, build_optimizer, build_scheduler, model_args_for
from .metrics_log import model_diagnostics, write_metrics
from .precision import Precision
from .replicas import broadcast_buffers, broadcast_lowrank_state, check_in_sync
from .signals import StopSignals, TrainingInterrupted, signal_name
from .step import BatchTransform, NonFiniteLossError, Stepper, Tally, identity
from .summary import run_summary
from .validation import validate

__all__ = ["LOG_EVERY", "TrainResult", "epoch_seed", "train"]

_EPOCH_SEED_STRIDE = 1_000_003

LOG_EVERY = 50
"""Batches between two reads of the training loss and accuracy from the device (the progress bar's postfix and the
non-finite-loss check, :meth:`~robustlr.train.step.Stepper.settle`); they are also read at the end of every epoch
and before a stop saves the resumable state, so the host waits for the device once per ``LOG_EVERY`` steps."""


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data order (and augmentation) of ``epoch``: distinct for every ``(seed, epoch)`` pair."""
    return seed * _EPOCH_SEED_STRIDE + epoch


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        config: the run's settings.
        paths: the run's files.
        history: one metrics record per epoch (see :mod:`robustlr.train.metrics_log`).
        best_epoch, best_val_accuracy: the epoch of ``best.pt`` and its validation accuracy.
        evaluation: the final evaluations, ``{"last": ..., "best": ...}``.
        summary: the content of ``summary.json``.
        model: the last model, in eval mode.
    """

    config: TrainConfig
    paths: RunPaths
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    evaluation: dict[str, EvaluationResult]
    summary: dict[str, Any]
    model: nn.Module

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The last epoch's metrics record."""
        return self.history[-1]


@dataclass(frozen=True)
class _Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def _load_splits(config: TrainConfig, given: tuple[ImageDataset, ImageDataset] | None) -> _Splits:
    """Training subset split into train/validation (seeded), and the test split: of ``config.data``, or the
    ``(train, test)`` datasets ``given``."""
    options = {"image_size": config.image_size, "workers": config.workers} if config.data == "folder" else {}
    full = load_dataset(config.data, "train", root=config.data_root, download=config.download, **options) \
        if given is None else given[0]
    if config.train_subset is not None:
        if config.train_subset > len(full):
            raise ValueError(f"train_subset must be an int in [2, {len(full)}] (the size of {config.data}'s training "
                             f"split) or None; got {config.train_subset}")
        full = full.subset(range(config.train_subset))
    train, val = train_val_split(full, config.val_fraction, seed=config.seed)
    if len(val) == 0:
        raise ValueError(f"val_fraction = {config.val_fraction:g} leaves no validation image out of {len(full)}; "
                         f"allowed: a fraction in (0, 1) with val_fraction · {len(full)} >= 1")
    test = load_dataset(config.data, "test", root=config.data_root, download=config.download, **options) \
        if given is None else given[1]
    if config.workers is not None:
        for split in (train, val, test):
            split.workers = config.workers
    return _Splits(train, val, test)


def _device(config: TrainConfig) -> torch.device:
    return check_device("device", config.device)


class _Run:
    """The objects of one run (in one process) and the steps of the loop."""

    def __init__(self, config: TrainConfig, progress: bool, batch_transform: BatchTransform | None,
                 group: Distributed, model: nn.Module | None = None,
                 data: tuple[ImageDataset, ImageDataset] | None = None) -> None:
        self.config = config
        self.paths = RunPaths(Path(config.out))
        self.group = group
        self.device = group.device(_device(config))
        self.progress = progress and self.group.is_main
        self.data = _load_splits(config, data)
        torch.manual_seed(config.seed)
        if model is None:
            model = build_model(config, model_args_for(config, self.data.train))
        else:
            model = copy.deepcopy(model)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.precision = Precision(config.amp, self.device)
        self.adversarial = None
        if config.adv is not None:
            self.adversarial = AdversarialTraining(config, len(self.data.train), self.data.train.image_shape,
                                                   self.device, self.group)
        # a process that finds its shard bad (the attack's input checks) makes every process raise, not hang
        self.transform: BatchTransform = group.agreed(self.adversarial or batch_transform or identity)
        self.state = TrainState()

    # ----------------------------------------------------------------------------------------- start / resume
    def start(self) -> None:
        """Claim ``out`` for a new run: refuse a directory that holds one, write ``config.json`` and the
        initial resumable state."""
        if self.paths.config.exists() or self.paths.resume.exists():
            raise ValueError(f"out {str(self.paths.out)!r} already holds a training run (config.json); pass "
                             "resume=True (--resume) to continue it, or choose another out directory")
        self.group.barrier()  # every process has looked before rank 0 writes
        self._write_config()
        self._save_resume()

    def resume(self) -> None:
        """Load ``resume.pt`` after checking that the configuration and the number of processes match."""
        payload = read_resume(self.paths.resume)
        try:
            stored = TrainConfig.from_stored(payload["config"])
        except ValueError as error:
            raise ValueError(f"resume state {str(self.paths.resume)!r}: config: {error}") from None
        differences = config_differences(stored, self.config)
        if differences:
            listed = "; ".join(f"{key} (stored {old!r}, given {new!r})" for key, (old, new) in differences.items())
            raise ValueError(
                f"resume: the configuration differs from the run in {str(self.paths.out)!r} in {listed}; only "
                f"{', '.join(RESUME_MAY_DIFFER)} may change on resume: give the stored values, or start a new run "
                "in another out directory"
            )
        if payload["world_size"] != self.group.world_size:
            raise ValueError(f"resume: the run in {str(self.paths.out)!r} was trained by {payload['world_size']} "
                             f"process(es); resume it with as many (--nproc {payload['world_size']}); got "
                             f"{self.group.world_size}")
        completed = payload["progress"]["epoch"]
        if self.config.epochs < completed:
            raise ValueError(f"epochs must be >= {completed}, the epochs already completed in "
                             f"{str(self.paths.out)!r}, to resume; got {self.config.epochs}")
        self.state = restore(payload, self.model, self.optimizer, self.scheduler, self.group.rank, self.device)
        self.precision.load_state_dict(payload["extra"]["scaler"])
        if self.adversarial is not None:
            self.adversarial.load_state_dict(payload["extra"]["adversarial"])
        self.group.barrier()  # every process has read resume.pt before rank 0 may rewrite it
        self._write_config()

    def _write_config(self) -> None:
        if self.group.is_main:
            atomic_write_text(self.paths.config, json.dumps(self.config.to_dict(), indent=2) + "\n")

    def _save_resume(self) -> None:
        """Write ``resume.pt`` (rank 0), with the RNG states of every process: a collective call."""
        rng = self.group.gather(rng_state(self.device))
        if self.group.is_main:
            extra = {"adversarial": {} if self.adversarial is None else self.adversarial.state_dict(),
                     "scaler": self.precision.state_dict()}
            save_resume(self.paths.resume, self.config, self.model, self.optimizer, self.scheduler, self.state,
                        rng=rng, extra=extra)

    # ------------------------------------------------------------------------------------------------ epochs
    def run_epochs(self, stop: StopSignals) -> None:
        stepper = Stepper(self.group.wrap(self.model), self.optimizer, self.transform, module=self.model,
                          world_size=self.group.world_size, reduce=self.group.sum, precision=self.precision)
        batches = TrainBatches(self.data.train, self.config.batch_size, self.config.augment, self.group.shard,
                               device=self.device)
        for epoch in range(self.state.epoch + 1, self.config.epochs + 1):
            self._train_batches(stepper, batches, epoch, stop)
            self._finish_epoch(epoch)
            signum = self._stop_requested(stop)
            if signum is not None:
                self._interrupt(signum, f"after epoch {epoch}")

    def _stop_requested(self, stop: StopSignals) -> int | None:
        """The signal that asked this or another process to stop, if any (SIGTERM when it reached another)."""
        flag = torch.tensor([float(stop.signum is not None)], dtype=torch.float64)
        if self.group.sum(flag).item() == 0:
            return None
        return stop.signum if stop.signum is not None else signal.SIGTERM

    def _train_batches(self, stepper: Stepper, batches: TrainBatches, epoch: int, stop: StopSignals) -> None:
        config, state = self.config, self.state
        adaptive = self.group.enabled and config.theta is not None
        with tqdm(total=len(batches), initial=state.batch, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                  leave=False, disable=not self.progress) as bar:
            # a resumed epoch starts after the batches done before the interruption (not fetched: the order and
            # the augmentation of every sample follow from the epoch's seed)
            for batch in batches.epoch(epoch, epoch_seed(config.seed, epoch), start=state.batch):
                tic = time.perf_counter()
                try:
                    step = stepper(batch.x, batch.y, batch.context,  # on self.device (TrainBatches)
                                   stopping=lambda: stop.signum is not None)
                except Exception:
                    self._settle(stepper, epoch)  # a loss gone non-finite is the cause of what the step raised
                    raise
                if adaptive:
                    broadcast_lowrank_state(self.model, self.optimizer, self.group)
                state.tally.seconds += time.perf_counter() - tic
                state.batch = batch.context.index + 1
                bar.update(1)
                if state.batch % LOG_EVERY == 0 or step.stop:
                    self._settle(stepper, epoch)
                    bar.set_postfix(loss=f"{state.tally.loss:.4f}", acc=f"{state.tally.accuracy:.4f}", refresh=False)
                if step.stop:
                    signum = stop.signum if stop.signum is not None else signal.SIGTERM
                    self._interrupt(signum, f"in epoch {epoch} after batch {state.batch} of {len(batches)}")
        self._settle(stepper, epoch)

    def _settle(self, stepper: Stepper, epoch: int) -> None:
        """Read the steps taken since the last read into the epoch's tally; a non-finite loss stops the run."""
        try:
            stepper.settle(self.state.tally)
        except NonFiniteLossError as error:
            raise self._diverged(f"{error} in epoch {epoch}, batch {error.batch}") from None

    def _check_replicas(self, epoch: int) -> str:
        """Give every process rank 0's buffers, check that all hold the same parameters, return their digest."""
        if self.group.enabled:
            broadcast_buffers(self.model, self.group)
        return check_in_sync(self.model, self.group, f"after epoch {epoch}")

    def _finish_epoch(self, epoch: int) -> None:
        """Validate, log, and checkpoint (best, last, metrics, then the resumable state)."""
        tic = time.perf_counter()
        config, state = self.config, self.state
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        digest = self._check_replicas(epoch)
        val = validate(self.model, self.data.val, config, self.device, self.group)
        if not math.isfinite(val.loss):
            raise self._diverged(f"the validation loss is not finite ({val.loss}) after epoch {epoch}")
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": state.tally.loss,
            "train_accuracy": state.tally.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "val_robust_accuracy": val.robust_accuracy,
            "adv_seconds": None if self.adversarial is None else state.tally.transform_seconds,
            **({} if self.adversarial is None else self.adversarial.memory()),
            **model_diagnostics(self.model, config.method),
            "param_digest": digest,
        }
        record["seconds"] = state.tally.seconds + time.perf_counter() - tic
        state.history.append(record)
        state.epoch, state.batch, state.tally = epoch, 0, Tally()
        score = val.score(config.select_by)
        improved = score > state.best_val_accuracy
        if improved:
            state.best_epoch, state.best_val_accuracy = epoch, score
        if self.group.is_main:
            if improved:
                save_weights(self.paths.best, self.model, config, record)
            save_weights(self.paths.last, self.model, config, record)
            write_metrics(self.paths.metrics_csv, self.paths.metrics_json, state.history, state.best_epoch,
                          state.best_val_accuracy)
        self._save_resume()
        if self.progress:
            robust = "" if val.robust_accuracy is None else f" robust {val.robust_accuracy:.4f}"
            adv = "" if record["adv_seconds"] is None else f" | attack {record['adv_seconds']:.1f} s"
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.4f} | val loss {val.loss:.4f} acc {val.accuracy:.4f}{robust} | kappa "
                f"max {record['kappa_max']:.4g} | lr {lr:g}{adv} | {record['seconds']:.1f} s"
            )

    def _interrupt(self, signum: int, where: str) -> None:
        self._save_resume()
        raise TrainingInterrupted(
            signum,
            f"training stopped by {signal_name(signum)} {where}; the resumable state is saved in "
            f"{str(self.paths.resume)!r}",
            self.paths.resume,
        )

    def _diverged(self, detail: str) -> NonFiniteLossError:
        state = self.state
        if state.epoch:
            kept = (f"the last good checkpoint (epoch {state.epoch}) is kept in {str(self.paths.last)!r} and "
                    f"{str(self.paths.resume)!r}")
        else:
            kept = f"no epoch was completed; {str(self.paths.resume)!r} holds the initial state"
        lr = self.optimizer.param_groups[0]["lr"]
        return NonFiniteLossError(
            f"{detail}: training stopped; {kept}. The step size is probably too large: lr = {self.config.lr:g} "
            f"(now {lr:g}); allowed: a finite lr > 0 small enough to keep the loss finite"
        )

    # ------------------------------------------------------------------------------------ final evaluation
    def final_evaluation(self, stop: StopSignals) -> TrainResult:
        """Evaluate the last and the best model (each attacked with attacks built on itself), write summary.json."""
        config, state, paths = self.config, self.state, self.paths

        def interrupted(signum: int) -> TrainingInterrupted:
            return TrainingInterrupted(
                signum,
                f"final evaluation stopped by {signal_name(signum)}; training is complete and its resumable "
                f"state is saved in {str(paths.resume)!r} (resuming redoes only the final evaluation)",
                paths.resume,
            )

        self.group.barrier()  # rank 0 has written best.pt
        best_model = copy.deepcopy(self.model)
        best_model.load_state_dict(read_torch(paths.best, "checkpoint", map_location=self.device))
        models = {"last": (self.model, state.epoch), "best": (best_model, state.best_epoch)}
        evaluations: dict[str, EvaluationResult] = {}
        with stop.immediate(interrupted):
            for which, (model, epoch) in models.items():
                if which == "best" and epoch == state.epoch:  # the last model is the best one: same weights
                    evaluations[which] = evaluations["last"]
                else:
                    evaluations[which] = evaluate_trained(model.eval(), self.data.test, config, self.progress,
                                                          self.device, self.group)
                if self.group.is_main:
                    write_report(evaluations[which], paths.evaluation(which),
                                 title=f"robustlr train: {which} model (epoch {epoch}), {config.method} "
                                       f"{config.model} on {config.data}",
                                 extra={"train_config": config.to_dict(), "checkpoint": f"{which}.pt", "epoch": epoch})
        summary = run_summary(config, state, self.model, self.adversarial, processes=self.group.world_size,
                              image_shape=self.data.train.image_shape, classes=list(self.data.train.classes),
                              evaluations={which: (evaluations[which], epoch) for which, (_, epoch) in models.items()},
                              paths=paths)
        if self.group.is_main:
            atomic_write_text(paths.summary, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return TrainResult(config, paths, state.history, state.best_epoch, state.best_val_accuracy, evaluations,
                           summary, self.model.eval())


def train(
    config: TrainConfig,
    progress: bool = True,
    *,
    resume: bool = False,
    batch_transform: BatchTransform | None = None,
    model: nn.Module | None = None,
    data: tuple[ImageDataset, ImageDataset] | None = None,
) -> TrainResult:
    """Train ``config.method`` on ``config.data`` into ``config.out``, then evaluate the last and best models.

    Args:
        config: the run's settings (``config.adv`` turns on adversarial training).
        progress: show a tqdm bar over the batches of each epoch and a line per epoch (rank 0 only).
        resume: continue the run in ``config.out`` from its ``resume.pt`` (its configuration must match,
            except for the keys in :data:`~robustlr.train.config.RESUME_MAY_DIFFER`, and so must the number of
            processes); without it ``config.out`` must not hold a run.
        batch_transform: ``(model, x, y, context) -> (x, y)`` applied to every training batch before the update
            (identity by default); must be None with ``config.adv``, whose attack is the transform.
        model: start from this model (e.g. a trained network converted by
            :func:`~robustlr.lowrank.to_lowrank`) instead of building ``config.model`` with ``config.method``'s
            layers: a copy of it is trained (``model`` itself is not changed) by ``config.method``'s optimiser;
            ``config.model`` and ``config.rank`` are then only recorded. A resumed run must be given a model of
            the same structure (its weights are replaced by the stored ones).
        data: ``(train, test)`` datasets to use instead of loading ``config.data`` (then only recorded);
            ``train_subset`` and the validation split apply to ``train`` as to a loaded training split.

    Inside ``torchrun`` (``WORLD_SIZE > 1``) the run is distributed (see the module docstring); every process
    returns the result, rank 0 alone writes the files. SIGINT and SIGTERM stop the run at the next batch
    boundary after saving ``resume.pt``.

    Raises:
        ValueError: for a bad setting (naming it, its value and what is allowed), a rank that does not fit the
            model, an ``out`` that already holds a run (without ``resume``) or a resume with another
            configuration (listing the keys) or number of processes; :class:`~robustlr.train.step.NonFiniteLossError`
            (a ValueError) when the loss becomes NaN or infinite, keeping the last good checkpoint.
        TrainingInterrupted: after SIGINT/SIGTERM, once the resumable state is saved.
        ReplicaDivergenceError: if the processes of a distributed run stop holding the same parameters.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module to start from, or None; got {type(model).__name__}")
    if data is not None and not (isinstance(data, tuple) and len(data) == 2
                                 and all(isinstance(part, ImageDataset) for part in data)):
        raise ValueError(f"data must be a (train, test) pair of robustlr ImageDatasets, or None; got {data!r:.200}")
    if batch_transform is not None and config.adv is not None:
        raise ValueError(f"batch_transform must be None when config.adv is set (adversarial training is the batch "
                         f"transform); got adv={config.adv!r} and a batch_transform")
    group = Distributed.from_env(_device(config))
    try:
        with group.raise_on_all():  # data and settings each process checks by itself (no collectives inside)
            run = _Run(config, progress, batch_transform, group, model, data)
        if resume:
            run.resume()
        else:
            run.start()
        with StopSignals() as stop:
            run.run_epochs(stop)
            return run.final_evaluation(stop)
    finally:
        group.close()
