"""Save and load model weights together with a JSON sidecar that describes them.

A checkpoint at ``path`` is two files:

* ``path``: the model's ``state_dict()`` written with :func:`torch.save`;
* ``<path>.json`` (see :func:`sidecar_path`, e.g. ``model.pt.json``): the caller's
  ``meta`` (data, metrics, ...) plus ``model`` (the :func:`~robustlr.models.create`
  name, or the class name of other models), ``model_args`` (the ``create()``
  arguments, or ``null``), ``robustlr_version`` and ``torch_version``.

Both are written atomically (temporary file in the same directory, then
:func:`os.replace`), so readers never see a half-written file.
"""

import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustlr

from ..files import TorchObjectsError, atomic_write_bytes, atomic_write_text, read_json, read_torch
from .registry import create, creation_args

_SHOWN_KEYS = 5  # offending keys listed in error messages

PathLike = str | os.PathLike[str]


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of the checkpoint at ``path``: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_checkpoint(
    path: PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``model.state_dict()`` to ``path`` and the sidecar ``<path>.json``.

    Args:
        path: weights file to write; missing parent directories are created.
        model: the model to save.
        meta: JSON-serializable facts to record, e.g. ``{"data": ..., "metrics": ...}``.
            ``meta["model_args"]`` overrides the arguments remembered by
            :func:`~robustlr.models.create`; ``model``, ``robustlr_version`` and
            ``torch_version`` are filled in (overwriting any given).

    Returns:
        The sidecar's content.

    Raises:
        ValueError: if ``meta`` is not a JSON-serializable mapping, or
            ``meta["model_args"]`` is not a mapping with a ``"name"``.
    """
    meta = {} if meta is None else meta
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a mapping (dict), got {type(meta).__name__}: {meta!r}")
    model_args = meta.get("model_args", creation_args(model))
    if model_args is not None and not (isinstance(model_args, Mapping) and "name" in model_args):
        raise ValueError(
            "meta['model_args'] must be create() keyword arguments with a 'name', "
            f"got {model_args!r}"
        )
    sidecar = {
        **meta,
        "model": type(model).__name__ if model_args is None else model_args["name"],
        "model_args": model_args,
        "robustlr_version": robustlr.__version__,
        "torch_version": str(torch.__version__),
    }
    try:
        text = json.dumps(sidecar, indent=2)
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta must be JSON-serializable: {error}") from None
    state = model.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(sidecar_path(path), text)
    return sidecar


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of the checkpoint at ``path`` (``None`` if there is none); a damaged one is a ValueError
    naming it (:func:`~robustlr.files.read_json`)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    return read_json(sidecar, "sidecar")


def model_from_sidecar(
    meta: Mapping[str, Any], sidecar: Path, build: Callable[[Mapping[str, Any]], nn.Module]
) -> nn.Module:
    """``build(meta["model_args"])``, with every way a sidecar's ``model_args`` can be malformed (not an
    object with a ``"name"``, arguments the model does not take, values it refuses) raised as one
    ``ValueError`` that names the sidecar file."""
    args = meta.get("model_args")
    if not isinstance(args, Mapping) or not isinstance(args.get("name"), str):
        raise ValueError(f"sidecar {str(sidecar)!r}: model_args must be an object of create() arguments with a "
                         f"'name'; got {args!r}")
    try:
        return build(args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sidecar {str(sidecar)!r}: model_args {dict(args)!r} do not build a model: {error}") from None


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = read_torch(path, "checkpoint")
    except TorchObjectsError as error:
        raise ValueError(
            f"{str(path)!r} is not a state dict: it pickles objects other than tensors "
            "(a whole model saved with torch.save(model)?); save model.state_dict() instead"
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{str(path)!r} is not a state dict: it holds a {type(state).__name__}, "
            "not a mapping of names to tensors (model.state_dict())"
        )
    bad = [
        key
        for key, value in state.items()
        if not (isinstance(key, str) and (isinstance(value, torch.Tensor) or key.endswith("_extra_state")))
    ]
    if bad:
        raise ValueError(
            f"{str(path)!r} is not a state dict: entries {bad[:_SHOWN_KEYS]!r} are not "
            "tensors keyed by name (a training checkpoint? save model.state_dict() alone)"
        )
    return state


def _check_match(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and isinstance(state[key], torch.Tensor) and state[key].shape != expected[key].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [
        f"{label} ({len(keys)}): {keys[:_SHOWN_KEYS]}" for label, keys in found.items() if keys
    ]
    if problems:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the model ({type(model).__name__}): "
            + "; ".join(problems)
        )


def load_checkpoint(
    path: PathLike, model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the checkpoint at ``path`` into ``model``, or into a model rebuilt with
    ``create(**meta["model_args"])`` from the sidecar when ``model`` is ``None``.

    Weights are read with ``torch.load(path, weights_only=True, map_location="cpu")``;
    the model's train/eval mode is left as it is.

    Returns:
        ``(model, meta)``, where ``meta`` is the sidecar's content (``{}`` if there is
        no sidecar and ``model`` was given).

    Raises:
        ValueError: if ``path`` is not a file, does not hold a state dict, or does not
            match the model (listing the first offending keys), or if ``model`` is
            ``None`` and the sidecar is missing or has no ``model_args``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing checkpoint file, got {str(path)!r}")
    meta = _read_sidecar(path)
    if model is None:
        if meta is None or not meta.get("model_args"):
            problem = "is missing" if meta is None else "has no 'model_args'"
            raise ValueError(
                f"cannot rebuild the model of checkpoint {str(path)!r}: its sidecar "
                f"{str(sidecar_path(path))!r} {problem}; "
                "pass model=<a module of the same architecture>"
            )
        model = model_from_sidecar(meta, sidecar_path(path), lambda args: create(**args))
    state = _read_state_dict(path)
    _check_match(path, model, state)
    model.load_state_dict(state)
    return model, meta or {}
