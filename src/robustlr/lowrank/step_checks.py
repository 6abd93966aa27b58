"""What every optimiser step of robustlr checks before any parameter moves: the hyperparameters of every param
group (finite numbers >= 0, also when changed after construction) and the finiteness of every gradient (one fused
flag, one host read; the parameter is named only on failure).  Used by :class:`~robustlr.lowrank.optim.CondLR`
and :class:`~robustlr.lowrank.qr_sgd.QRProjectedSGD`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from robustlr.checks import check_number

__all__ = ["SCALARS", "ParamsT", "check_finite_gradients", "check_hyperparameters", "checked_scalar", "parameter_names"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]
"""What an optimiser takes as ``params``: parameters or param groups."""


def parameter_names(model: nn.Module) -> dict[Tensor, str]:
    """``{parameter: its name in model}``: how the step checks name a parameter in their errors."""
    return {p: name for name, p in model.named_parameters()}

#: Hyperparameters of every param group that must be finite numbers >= 0.
SCALARS = ("lr", "momentum", "weight_decay")


def checked_scalar(name: str, value: object) -> object:
    """``value`` if it is a finite number >= 0 (any real number, as a float; or a one-element floating tensor,
    kept as it is), else ``ValueError`` naming it."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a finite number >= 0 or a one-element floating tensor; got {value!r}")
        check_number(name, float(value.detach()))
        return value
    return check_number(name, value)


def check_hyperparameters(optimizer: Optimizer, extra: Callable[[str, dict[str, Any]], None] | None = None) -> None:
    """Check (and normalise) ``lr``, ``momentum`` and ``weight_decay`` of every param group, which a user or a
    scheduler may have changed since construction: each must be a finite number >= 0 (``ValueError`` naming
    ``param_groups[i]['lr']`` and the value). Tensor values were checked when their group was added and are
    not read again (that would cost a device sync per step). ``extra(prefix, group)`` checks more keys."""
    for i, group in enumerate(optimizer.param_groups):
        prefix = f"param_groups[{i}]"
        for key in SCALARS:
            if not isinstance(group[key], Tensor):
                group[key] = check_number(f"{prefix}[{key!r}]", group[key])
        if extra is not None:
            extra(prefix, group)


def check_finite_gradients(optimizer: Optimizer, names: Mapping[Tensor, str]) -> None:
    """Raise ``ValueError`` naming the first parameter whose gradient holds a NaN or an infinity, before the
    step changes anything.

    One fused check and one host read per step: the 2-norms of all gradients (one foreach kernel; a NaN or an
    infinity makes its gradient's norm non-finite), stacked and tested together. Only when that fails are the
    gradients looked at one by one, which also tells a finite gradient whose norm overflowed (not refused)
    from a non-finite one. ``names`` maps parameters to their names in the model (others are named by their
    place in ``param_groups``).
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    device = grads[0].device
    if any(norm.device != device for norm in norms):
        norms = [norm.to(device) for norm in norms]
    if bool(torch.isfinite(torch.stack(norms)).all()):  # stack promotes mixed dtypes
        return
    places = [
        (p, f"param_groups[{i}]['params'][{j}]")
        for i, group in enumerate(optimizer.param_groups)
        for j, p in enumerate(group["params"])
        if p.grad is not None
    ]
    for p, place in places:
        grad = p.grad
        if not bool(torch.isfinite(grad).all()):
            nan, inf = int(torch.isnan(grad).sum()), int(torch.isinf(grad).sum())
            raise ValueError(
                f"{type(optimizer).__name__}.step refused: the gradient of {names.get(p, place)!r} (shape "
                f"{tuple(p.shape)}) has {nan} NaN and {inf} infinite entries of {grad.numel()}; no parameter and "
                "no optimiser state was changed. The loss probably overflowed: lower lr, or use a gradient "
                "scaler (amp='fp16')"
            )
