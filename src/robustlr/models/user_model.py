"""Load a user's own model from a Python file: ``path/to/file.py:factory``."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

__all__ = ["load_model_file"]


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"robustlr_user_model_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    assert spec is not None and spec.loader is not None  # guaranteed for a .py file
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # lets the file use dataclasses, pickling, etc.
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _describe(error: BaseException, path: Path) -> str:
    """``Type: first line of the message``, with the line of ``path`` it was raised from when known
    (a ``SyntaxError`` names its line itself)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if isinstance(error, SyntaxError):
        return text
    resolved = str(path.resolve())
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == resolved:
            line = tb.tb_lineno
        tb = tb.tb_next
    return text if line is None else f"{text} (line {line})"


def load_model_file(spec: str, **kwargs: Any) -> nn.Module:
    """Import ``path/to/file.py`` and return ``factory(**kwargs)`` for the spec
    ``"path/to/file.py:factory"`` (``factory`` may be a function or an ``nn.Module``
    class). The file is executed afresh on every call.

    Every failure is a ``ValueError`` whose message starts with ``spec '<spec>':`` (or, for a
    malformed spec, ``spec must look like ...``) and chains the original exception.

    Raises:
        ValueError: if ``spec`` is malformed, the file does not exist or is not a ``.py``
            file, importing it raises (a ``SyntaxError`` or any exception of its code,
            named with its type, message and line), it has no attribute ``factory``, the
            attribute is not callable, it cannot be called with ``kwargs`` (e.g. it needs
            arguments), the call raises (type, message, line), or it does not return an
            ``nn.Module``.
    """
    file, colon, attribute = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not colon or not file or not attribute.isidentifier():
        raise ValueError(f"spec must look like 'path/to/file.py:factory', got {spec!r}")
    path = Path(file)
    if path.suffix != ".py" or not path.is_file():
        raise ValueError(f"spec {spec!r}: {file!r} is not an existing .py file")
    try:
        module = _import_file(path)
    except (Exception, SystemExit) as error:
        raise ValueError(f"spec {spec!r}: importing {file!r} failed: {_describe(error, path)}") from error
    if not hasattr(module, attribute):
        raise ValueError(f"spec {spec!r}: {file!r} defines no attribute {attribute!r}")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise ValueError(
            f"spec {spec!r}: {attribute!r} is a {type(factory).__name__}, not a callable factory"
        )
    call = f"{attribute}(**{kwargs!r})" if kwargs else f"{attribute}()"
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise ValueError(f"spec {spec!r}: cannot call {call}: {error}") from None
    except ValueError:  # no signature to inspect (a builtin): the call below tells
        pass
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise ValueError(f"spec {spec!r}: {call} raised {_describe(error, path)}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"spec {spec!r}: {attribute}(**{kwargs!r}) returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model
