"""Load a user's own model from a Python file: ``path/to/file.py:factory``."""

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn


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


def load_model_file(spec: str, **kwargs: Any) -> nn.Module:
    """Import ``path/to/file.py`` and return ``factory(**kwargs)`` for the spec
    ``"path/to/file.py:factory"`` (``factory`` may be a function or an ``nn.Module``
    class). The file is executed afresh on every call; exceptions raised by the
    user's own code propagate unchanged.

    Raises:
        ValueError: naming ``spec`` if it is malformed, the file does not exist or is
            not a ``.py`` file, it has no attribute ``factory``, the attribute is not
            callable, or the call does not return an ``nn.Module``.
    """
    file, colon, attribute = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not colon or not file or not attribute.isidentifier():
        raise ValueError(f"spec must look like 'path/to/file.py:factory', got {spec!r}")
    path = Path(file)
    if path.suffix != ".py" or not path.is_file():
        raise ValueError(f"spec {spec!r}: {file!r} is not an existing .py file")
    module = _import_file(path)
    if not hasattr(module, attribute):
        raise ValueError(f"spec {spec!r}: {file!r} defines no attribute {attribute!r}")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise ValueError(
            f"spec {spec!r}: {attribute!r} is a {type(factory).__name__}, not a callable factory"
        )
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"spec {spec!r}: {attribute}(**{kwargs!r}) returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model
