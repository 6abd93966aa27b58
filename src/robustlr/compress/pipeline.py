"""``compress``: a trained dense network → a robust low-rank one, measured before and after.

Steps (one line each when ``verbose``):

1. evaluate the dense model: clean and robust accuracy under the run's attacks at every ε of its grid;
2. choose the ranks from the trained weights (:func:`~robustlr.lowrank.rank_choice.choose_ranks`) and convert
   (:func:`~robustlr.lowrank.to_lowrank`: truncated SVDs of the trained weights, ``U S Vᵀ`` layers);
3. fine-tune with CondLR (κ(S) ≤ 1 + τ), optionally adversarially: a :func:`robustlr.train.train` run started
   from the converted model, with its checkpoints, validation, model selection and exact resume;
4. evaluate the selected fine-tuned model with the same attacks, read κ of every layer of both models, time
   both on a batch of the test images, write the before/after table.

Files in ``out``: ``compress.json`` (settings, the dense weights' digest; written first), ``dense-eval.json`` and
``eval-dense/`` (step 1), ``finetune/`` (the training run of step 3), ``eval-lowrank/``, ``model.pt`` with its
sidecar (the fine-tuned low-rank model; :func:`load_compressed` rebuilds it), and the tables of
:mod:`robustlr.compress.result`. Every file is written atomically.

Resume (``resume=True``): the settings must be the stored ones (apart from
:data:`~robustlr.compress.settings.RESUME_MAY_DIFFER`), the dense model the same (digest of its weights) and the
data of the same size and shape; step 1 is reused when its file is there, step 3 resumes from the trainer's
``resume.pt`` (bit for bit on the CPU), steps 2 and 4 are recomputed (they are deterministic: the same seeded
attacks on the same weights). SIGINT/SIGTERM stop the fine-tuning at a batch boundary after saving its state,
and an evaluation at once (it is redone); both raise :class:`~robustlr.train.TrainingInterrupted`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlr.analysis.conditioning import layer_condition_numbers
from robustlr.data import ImageDataset
from robustlr.files import atomic_write_text, read_json, read_torch
from robustlr.lowrank import to_lowrank
from robustlr.lowrank.export import factored_layers
from robustlr.lowrank.rank_choice import RankChoice, choose_ranks
from robustlr.models import load_checkpoint, save_checkpoint
from robustlr.models.registry import creation_args
from robustlr.report import write_report
from robustlr.train import TrainingInterrupted, train, train_seconds
from robustlr.train.signals import StopSignals, signal_name

from .measure import evaluate_model, evaluation_summary, latency_ratio
from .result import CompressionResult
from .settings import CompressSettings, parse_rank_request

__all__ = ["RECORD", "check_run_dir", "compress", "load_compressed"]

RECORD = "compress.json"
FORMAT = 1
_DENSE_EVAL = "dense-eval.json"
_MODEL = "model.pt"


def _weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _label(model: nn.Module) -> str:
    args = creation_args(model)
    return args["name"] if args else type(model).__name__


def _data_record(train: ImageDataset, test: ImageDataset) -> dict[str, Any]:
    return {"name": train.name, "image_shape": list(train.image_shape), "classes": train.num_classes,
            "train_size": len(train), "test_size": len(test)}


def _check_inputs(model: object, train: object, test: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a trained torch.nn.Module; got {type(model).__name__}")
    for name, data in (("train_data", train), ("test_data", test)):
        if not isinstance(data, ImageDataset):
            raise ValueError(f"{name} must be a robustlr ImageDataset (robustlr.data.load_dataset); got "
                             f"{type(data).__name__}")
    shapes = [(data.image_shape, data.num_classes) for data in (train, test)]  # type: ignore[union-attr]
    if shapes[0] != shapes[1]:
        raise ValueError(f"train_data and test_data must have the same image shape and classes; got (shape, classes) "
                         f"{shapes[0]} and {shapes[1]}")
    lowrank = [name for name, _ in factored_layers(model)]  # type: ignore[arg-type]
    if lowrank:
        raise ValueError(f"model must be dense: it already has low-rank layers {lowrank}; compress the dense network "
                         "it was trained from, or fine-tune it with robustlr train")


def _settings(options: dict[str, Any]) -> CompressSettings:
    known = [f.name for f in fields(CompressSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown compress settings {unknown}; allowed: {known}")
    return CompressSettings(**options)


def check_run_dir(out: str | Path, resume: bool) -> None:
    """Check, without writing, that ``out`` can hold a new compression (a new or empty directory) or, with
    ``resume``, holds one (its ``compress.json``).

    Raises:
        ValueError: naming ``out`` and what it holds instead.
    """
    out = Path(out)
    path = out / RECORD
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} is a file, not a directory; name a new or empty directory")
    if resume and not path.is_file():
        raise ValueError(f"resume: {str(path)!r} does not exist, so there is no compression to resume in {str(out)!r}")
    if not resume and path.exists():
        raise ValueError(f"out {str(out)!r} already holds a compression (compress.json); pass resume=True (--resume) "
                         "to continue it, or choose another out directory")
    if not resume and out.exists() and any(out.iterdir()):
        raise ValueError(f"out {str(out)!r} is not empty and holds no compression; choose a new or empty directory")


def _claim(out: Path, record: dict[str, Any], settings: CompressSettings, resume: bool) -> None:
    """Refuse ``out`` when it cannot hold this run (module docstring), then write ``compress.json``."""
    check_run_dir(out, resume)
    path = out / RECORD
    if resume:
        stored = read_json(path, "compression record")
        differences = settings.differences(stored.get("settings", {}))
        for key in ("dense_digest", "data", "format"):
            if stored.get(key) != record[key]:
                differences[key] = (stored.get(key), record[key])
        if differences:
            listed = "; ".join(f"{key} (stored {old!r}, given {new!r})" for key, (old, new) in differences.items())
            raise ValueError(f"resume: the compression in {str(out)!r} differs in {listed}; only epochs and device may "
                             "change on resume: give the stored values (the same model and data), or start a new run "
                             "in another out directory")
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _choose(dense: nn.Module, settings: CompressSettings) -> RankChoice:
    flags = {"keep_last_full": settings.keep_last_full, "force": settings.force}
    if settings.rank is None:
        choice = choose_ranks(dense, params=settings.params, **flags)
    else:
        rank, energy = parse_rank_request(settings.rank)
        choice = choose_ranks(dense, rank, energy=energy, **flags)
    if not choice.ranks:
        raise ValueError(f"{choice.rule}: no layer would be factorised (every factorisation would store at least as "
                         "many weights as its dense layer); allowed: a smaller rank, energy or params, or force=True")
    return choice


def _interrupted(what: str, out: Path) -> Callable[[int], TrainingInterrupted]:
    def error(signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(signum, f"compress stopped by {signal_name(signum)} while {what}; the finished "
                                           f"steps are saved in {str(out)!r} (resuming redoes only the rest)", out)

    return error


def compress(
    model: nn.Module,
    train_data: ImageDataset,
    test_data: ImageDataset,
    *,
    out: str | Path = "runs/compress",
    resume: bool = False,
    progress: bool = True,
    verbose: bool = True,
    **settings: Any,
) -> CompressionResult:
    """Compress a trained dense ``model``: choose ranks, convert, fine-tune with CondLR, measure before and after
    (module docstring).

    Args:
        model: the trained network (``[0, 1]`` images to logits); only read.
        train_data, test_data: the fine-tuning data (a seeded validation split is held out of it) and the
            evaluation data.
        out: the run's directory (new or empty, or with ``resume`` an earlier compression's).
        resume: continue the compression in ``out``.
        progress: progress bars and the trainer's epoch lines; ``verbose``: one line per step.
        **settings: the keys of :class:`~robustlr.compress.settings.CompressSettings`: ``rank`` (as training
            takes it, or ``"energy:0.9"``) or ``params`` (a budget fraction), ``keep_last_full``, ``force``,
            ``epochs=5``, ``tau=0.1``, ``lr=0.005``, ``adv`` (e.g. ``"pgd"``), ``attacks=("pgd-linf",)``, ``eps``,
            ``eval_n``, ``eval_steps``, ``attack_rank``, ``eval_batch_size``, ``latency_batch``, ``latency_repeats``,
            ``seed``, ``device``, ``train_options`` (other TrainConfig keys: ``adv_eps``, ``batch_size``,
            ``train_subset`` …).

    Raises:
        ValueError: naming the setting, for a bad setting, a model that is not dense or data that do not fit,
            a rank choice that factorises nothing, an ``out`` that cannot hold the run or a resume with other
            settings, model or data; whatever :func:`robustlr.train.train` raises.
        TrainingInterrupted: after SIGINT/SIGTERM (see the module docstring).
    """
    _check_inputs(model, train_data, test_data)
    config = _settings(settings).with_data(train_data.image_shape[0])
    out = Path(out)
    say: Callable[[str], None] = tqdm.write if verbose else (lambda text: None)
    device = torch.device(config.device)
    dense = copy.deepcopy(model).to(device).eval()
    record = {"format": FORMAT, "settings": config.to_dict(), "model": _label(model),
              "dense_digest": _weights_digest(model), "data": _data_record(train_data, test_data)}
    choice = _choose(dense, config)  # reads the weights only: a rank that cannot be chosen fails before any work
    _claim(out, record, config, resume)
    with StopSignals() as stop:
        with stop.immediate(_interrupted("evaluating the dense model", out)):
            dense_eval = _dense_evaluation(dense, test_data, config, out, resume, progress, say)
        with stop.immediate(_interrupted("converting the model", out)):
            converted = to_lowrank(copy.deepcopy(dense), choice.ranks, keep_last_full=False)
        say(f"[2/4] {choice.rule}: ranks {' '.join(f'{k}={v}' for k, v in choice.ranks.items())}; kept dense: "
            f"{', '.join(choice.dense) or 'none'}; {choice.stored} of {choice.dense_weights} weights "
            f"({100 * choice.fraction:.1f} %)")
    finetune = config.finetune_config(choice.ranks, str(out / "finetune"), _label(model), train_data.name)
    resumed = resume and (out / "finetune" / "resume.pt").is_file()
    adversarially = f", adversarially: {config.adv}" if config.adv else ""
    say(f"[3/4] fine-tuning with CondLR (tau {config.tau:g}{adversarially}) for {config.epochs} epochs into "
        f"{out / 'finetune'}{' (resumed)' if resumed else ''}")
    run = train(finetune, progress=progress, resume=resumed, model=converted, data=(train_data, test_data))
    with StopSignals() as stop, stop.immediate(_interrupted("evaluating the low-rank model", out)):
        lowrank = copy.deepcopy(converted)
        lowrank.load_state_dict(read_torch(run.paths.best, "checkpoint", map_location=device))
        lowrank.eval()
        lowrank_eval = evaluate_model(lowrank, test_data, config, progress)
        write_report(lowrank_eval, out / "eval-lowrank", title=f"robustlr compress: the low-rank model ({choice.rule})",
                     extra={"settings": config.to_dict()})
        x = test_data[: min(config.latency_batch, len(test_data))][0].to(device)
        result = CompressionResult(
            settings=config, choice=choice, dense=dense_eval, lowrank=evaluation_summary(lowrank_eval),
            kappa_dense=layer_condition_numbers(dense), kappa_lowrank=layer_condition_numbers(lowrank),
            latency=latency_ratio(dense, lowrank, x, config.latency_repeats),
            finetune={"seconds": train_seconds(run.paths.out), "epochs": len(run.history), "best_epoch": run.best_epoch,
                      "select_by": finetune.select_by, "run": str(run.paths.out)},
            model=lowrank, out=out,
        )
        save_checkpoint(out / _MODEL, lowrank, {"compress": {"ranks": choice.ranks, "rule": choice.rule,
                                                              "settings": config.to_dict()}})
        result.write(out)
    say(f"[4/4] low-rank model (epoch {run.best_epoch}): clean accuracy {lowrank_eval.clean_accuracy:.4f}; "
        f"{100 * result.saved_fraction:.1f} % of the weights saved; latency ratio {result.latency['ratio']:.3f}; "
        f"written to {out}")
    return result


def _dense_evaluation(dense: nn.Module, test: ImageDataset, config: CompressSettings, out: Path, resume: bool,
                      progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Step 1, or its summary from ``dense-eval.json`` when resuming a run that finished it."""
    path = out / _DENSE_EVAL
    if resume and path.is_file():
        summary = read_json(path, "dense evaluation")
        say(f"[1/4] dense model: clean accuracy {summary['clean_accuracy']:.4f} (reused from {path})")
        return summary
    result = evaluate_model(dense, test, config, progress)
    write_report(result, out / "eval-dense", title="robustlr compress: the dense model",
                 extra={"settings": config.to_dict()})
    summary = evaluation_summary(result)
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    say(f"[1/4] dense model: clean accuracy {result.clean_accuracy:.4f} on n = {result.n}")
    return summary


def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """The low-rank model saved by :func:`compress` (``model.pt``): ``model``, the dense architecture it was
    compressed from, converted at the recorded ranks (``to_lowrank(model, ranks, keep_last_full=False)``, in
    place) with the saved weights loaded; returned in eval mode.

    Raises:
        ValueError: naming the file, if it or its sidecar is missing or damaged, the sidecar records no
            compression, or the weights do not fit the converted model.
    """
    path = Path(path)
    meta = read_json(path.with_name(path.name + ".json"), "sidecar")
    ranks = meta.get("compress", {}).get("ranks") if isinstance(meta.get("compress"), dict) else None
    if not isinstance(ranks, dict) or not ranks:
        raise ValueError(f"path must be a model.pt written by robustlr compress (its sidecar records the ranks); got "
                         f"{str(path)!r}")
    converted = to_lowrank(model, ranks, keep_last_full=False)
    loaded, _ = load_checkpoint(path, converted)
    return loaded.eval()
