"""Build the model and the data that a command works on, from its parsed options."""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from torch import nn

from ..data import ImageDataset, load_dataset
from ..models import create, load_checkpoint, load_model_file, sidecar_path
from ..train import load_trained
from .options import CliError

__all__ = ["load_data", "load_model"]


def load_data(args: argparse.Namespace, split: str | None = None) -> ImageDataset:
    """The dataset of ``--data``/``--split``, restricted to the first ``--n`` images (0 or None: all)."""
    data = load_dataset(args.data, split or args.split, root=args.data_root, download=args.download)
    n = getattr(args, "n", None)
    if n is not None and n < 0:
        raise CliError(f"--n must be >= 0 (0 = all), got {n}")
    return data.subset(range(min(n, len(data)))) if n else data


def load_model(args: argparse.Namespace, data: ImageDataset) -> nn.Module:
    """The model of ``--model``/``--model-file``/``--checkpoint``, in eval mode on ``--device``."""
    if args.model and args.model_file:
        raise CliError("give --model or --model-file, not both")
    c, h, _ = data.image_shape
    if args.model_file:
        model = load_model_file(args.model_file)
    elif args.model:
        model = create(args.model, num_classes=data.num_classes, in_channels=c, image_size=h)
    elif args.checkpoint:
        return _from_checkpoint(args.checkpoint).to(args.device).eval()
    else:
        raise CliError("name a model: --checkpoint PATH (saved by robustlr train), --model NAME or --model-file PATH.py:FACTORY")
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, model)
    else:
        warnings.warn("no --checkpoint given: the model has random weights", stacklevel=2)
    return model.to(args.device).eval()


def _from_checkpoint(path: str) -> nn.Module:
    """Rebuild a model from a robustlr checkpoint alone: one written by ``robustlr train`` (low-rank
    structure included) or by ``save_checkpoint`` for a model of the zoo."""
    sidecar = sidecar_path(path)
    if sidecar.is_file() and "train_config" in json.loads(sidecar.read_text()):
        return load_trained(path)[0]
    return load_checkpoint(path)[0]


def device_of(args: argparse.Namespace) -> torch.device:
    try:
        return torch.device(args.device)
    except RuntimeError as exc:
        raise CliError(f"--device {args.device!r} is not a torch device ({exc})") from None
