"""The train/eval mode of every submodule of a model, saved and restored.

``model.train(flag)`` sets every submodule to ``flag``, which loses deliberate mixtures: a frozen BatchNorm
(eval) inside a model being trained, or an MC-dropout block (train) inside an evaluated model.  Attacks and
evaluation put the model in eval mode and restore each submodule's own flag afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode", "saved_modes", "restore_modes"]

Modes = list[tuple[nn.Module, bool]]


def saved_modes(model: object) -> Modes:
    """Every submodule of ``model`` with its ``training`` flag (empty if ``model`` is not an ``nn.Module``)."""
    if not isinstance(model, nn.Module):
        return []
    return [(module, module.training) for module in model.modules()]


def restore_modes(modes: Modes) -> None:
    """Set each module's ``training`` flag back to the saved one (the module's own flag only: no recursion)."""
    for module, training in modes:
        module.training = training


@contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Run the block with ``model`` in eval mode; every submodule's own mode is restored on exit."""
    modes = saved_modes(model)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        restore_modes(modes)
