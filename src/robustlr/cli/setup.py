"""Build the model and the data that a command works on, from its parsed options, and check that they fit.

Errors speak the command line's language: a library ``ValueError`` about one of its own arguments (``name``,
``path``, ``spec``, ``rank`` …) is re-raised by :func:`cli_names` naming the option the user typed.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..checks import check_choice, check_device, check_int
from ..data import DATASET_NAMES, ImageDataset, load_dataset
from ..files import read_json
from ..compress import load_compressed
from ..models import create, load_checkpoint, load_model_file, model_from_sidecar, sidecar_path
from ..modes import eval_mode
from ..train import load_trained
from .options import CliError

__all__ = ["check_counts", "check_model_fits", "cli_names", "device_of", "load_data", "load_model", "model_source"]


@contextmanager
def cli_names(renames: Mapping[str, str], context: str = "") -> Iterator[None]:
    """Re-raise a library ``ValueError`` from the block as a :class:`CliError` in the command line's terms.

    A message whose subject is a library argument of ``renames`` — at its start (``"name must be one of …"``)
    or after a location prefix (``"layer 'fc': rank must be …"``) — gets the option instead (``"--data must be
    one of …"``, ``"layer 'fc': --rank must be …"``); any other message is prefixed with ``context`` (e.g.
    ``"--checkpoint x.pt: "``) when one is given.  ``CliError`` passes through unchanged.
    """
    try:
        yield
    except CliError:
        raise
    except ValueError as exc:
        message = str(exc)
        for name, option in renames.items():
            if message.startswith(f"{name} "):
                raise CliError(option + message[len(name):]) from exc
            where, colon, rest = message.partition(": ")
            if colon and rest.startswith(f"{name} must"):
                raise CliError(f"{where}: {option}{rest[len(name):]}") from exc
        raise CliError(f"{context}: {message}" if context else message) from exc


def device_of(args: argparse.Namespace) -> torch.device:
    """``--device`` as a device this machine has (:func:`robustlr.checks.check_device`); the first check a
    command makes, before any data or model is loaded."""
    return check_device("--device", args.device)


def check_counts(args: argparse.Namespace) -> None:
    """Check the counts a command takes, under their option names, before any work: ``--batch-size`` >= 1
    and, where the command has them, ``--steps`` >= 1 and ``--restarts`` >= 1 (``--n`` is :func:`load_data`'s)."""
    check_int("--batch-size", args.batch_size, 1)
    for option in ("steps", "restarts"):
        if hasattr(args, option):
            check_int(f"--{option}", getattr(args, option), 1)


def load_data(args: argparse.Namespace, split: str | None = None) -> ImageDataset:
    """The dataset of ``--data``/``--split`` (``--image-size`` for a folder), restricted to the first ``--n``
    images (0 or None: all), loaded by ``--workers`` processes (None: the dataset's default).

    Raises:
        ValueError: naming ``--data`` for an unknown dataset (listing the known ones) or a bad file (naming it),
            ``--n`` if it is negative, ``--workers`` if negative, ``--image-size`` for a dataset other than a folder.
    """
    check_choice("--data", args.data, DATASET_NAMES)
    n = getattr(args, "n", None)
    if n is not None:
        check_int("--n", n, 0, "0 = all")
    workers, image_size = getattr(args, "workers", None), getattr(args, "image_size", None)
    if workers is not None:
        check_int("--workers", workers, 0, "0 = the main process")
    options = {}
    if args.data == "folder":
        options = {"image_size": image_size, "workers": workers}
    elif image_size is not None:
        raise CliError(f"--image-size applies to --data folder only (the images of --data {args.data} keep their "
                       f"size); got --image-size {image_size}")
    renames = {"name": "--data", "split": "--split", "root": "--data-root", "image_size": "--image-size"}
    with cli_names(renames, f"--data {args.data}"):
        data = load_dataset(args.data, split or args.split, root=args.data_root, download=args.download, **options)
    if workers is not None:
        data.workers = workers
    return data.subset(range(min(n, len(data)))) if n else data


def model_source(args: argparse.Namespace) -> str:
    """The options that name the model, as typed (``--model lenet5 --checkpoint x.pt``)."""
    given = [(option, getattr(args, option[2:].replace("-", "_")))
             for option in ("--model", "--model-file", "--checkpoint")]
    return " ".join(f"{option} {value}" for option, value in given if value)


def load_model(args: argparse.Namespace, data: ImageDataset, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``--model``/``--model-file``/``--checkpoint``, in eval mode on ``device``.

    Raises:
        ValueError: naming the option: both ``--model`` and ``--model-file``, none of them and no
            ``--checkpoint``, an unknown ``--model`` or one that cannot be built for the data's images, a
            ``--model-file`` that cannot be imported or called, a ``--checkpoint`` that is missing, has no
            sidecar to rebuild its model from, or does not match the model.
    """
    if args.model and args.model_file:
        raise CliError("give --model or --model-file, not both")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CliError(f"--checkpoint must be an existing checkpoint file, got {args.checkpoint!r}")
    c, h, _ = data.image_shape
    if args.model_file:
        with cli_names({"spec": "--model-file"}, f"--model-file {args.model_file}"):
            model = load_model_file(args.model_file)
    elif args.model:
        described = f"--model {args.model} on --data {args.data} (images of shape {data.image_shape})"
        with cli_names({"name": "--model"}, described):
            model = create(args.model, num_classes=data.num_classes, in_channels=c, image_size=h)
    elif args.checkpoint:
        return _from_checkpoint(args.checkpoint).to(device).eval()
    else:
        raise CliError("name a model: --checkpoint PATH (saved by robustlr train), --model NAME or --model-file PATH.py:FACTORY")
    if args.checkpoint:
        with cli_names({"path": "--checkpoint"}, f"--checkpoint {args.checkpoint}"):
            model = _load_weights(args.checkpoint, model)
    else:
        warnings.warn("no --checkpoint given: the model has random weights", stacklevel=2)
    return model.to(device).eval()


def _from_checkpoint(path: str) -> nn.Module:
    """Rebuild a model from a robustlr checkpoint alone: one written by ``robustlr train`` (low-rank
    structure included), by ``robustlr compress`` (``model.pt``, of a zoo model) or by ``save_checkpoint`` for a
    model of the zoo; its sidecar must name the model."""
    sidecar = sidecar_path(path)
    with cli_names({"path": "--checkpoint"}, f"--checkpoint {path}"):
        meta = read_json(sidecar, "sidecar") if sidecar.is_file() else None
        if meta is None or not (meta.get("model_args") or "train_config" in meta):
            problem = "is missing" if meta is None else "does not name the model (no model_args)"
            raise CliError(f"--checkpoint {path}: its sidecar {sidecar.name} {problem}, so the model cannot be "
                           "rebuilt from it; name the architecture with --model NAME or --model-file PATH.py:FACTORY")
        if "compress" in meta:  # written by robustlr compress: the dense architecture, converted at its ranks
            return load_compressed(path, model_from_sidecar(meta, sidecar, lambda args: create(**args)))
        return load_trained(path)[0] if "train_config" in meta else load_checkpoint(path)[0]


def _load_weights(path: str, model: nn.Module) -> nn.Module:
    """The weights of checkpoint ``path`` loaded into ``model`` (of ``--model``/``--model-file``); a ``model.pt``
    of ``robustlr compress`` (its sidecar records the ranks) into ``model`` converted at those ranks."""
    sidecar = sidecar_path(path)
    meta = read_json(sidecar, "sidecar") if sidecar.is_file() else {}
    if "compress" in meta:
        return load_compressed(path, model)
    return load_checkpoint(path, model)[0]


def check_model_fits(model: nn.Module, data: ImageDataset, args: argparse.Namespace,
                     device: torch.device | str = "cpu") -> None:
    """Check, before any work, that the model takes the data: forward the first two images of ``data``
    (under ``torch.no_grad``, in eval mode, every submodule's mode restored) and require floating-point
    logits of shape ``(2, K)`` with ``K`` >= the data's number of classes.

    Raises:
        CliError: naming the model's options (:func:`model_source`), ``--data`` and the image shape, with
            the first line of the model's own error when its forward pass fails.
    """
    shape = tuple(data.image_shape)
    x = data[:2][0].to(device)
    model_is = f"the model ({model_source(args)})"
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        lines = str(exc).strip().splitlines()
        raise CliError(f"{model_is} does not accept inputs of shape {shape} from --data {args.data}: "
                       f"{type(exc).__name__}: {lines[0] if lines else ''}") from exc
    where = f"{model_is} does not fit --data {args.data} (images of shape {shape})"
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        kind = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise CliError(f"{where}: it returns {kind}, not floating-point logits of shape (N, classes)")
    if out.ndim != 2 or out.shape[0] != len(x):
        raise CliError(f"{where}: for a batch of shape {tuple(x.shape)} it returns shape {tuple(out.shape)}, "
                       f"not logits of shape ({len(x)}, classes)")
    if out.shape[1] < data.num_classes:
        raise CliError(f"{where}: it returns {out.shape[1]} logits per image but --data {args.data} has "
                       f"{data.num_classes} classes")
