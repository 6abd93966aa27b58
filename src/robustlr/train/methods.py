"""The four training methods: how each builds its model, optimiser and learning-rate schedule.

========== ============================================ ==========================================
method     model                                        optimiser
========== ============================================ ==========================================
dense      the zoo model                                ``torch.optim.SGD`` with momentum
lowrank    ``to_lowrank(method="vanilla")``: ``A Bᵀ``   ``torch.optim.SGD`` with momentum
condlr     ``to_lowrank(method="condlr")``: ``U S Vᵀ``  :class:`~robustlr.lowrank.CondLR` (τ, grad scale, θ)
orthogonal the zoo model                                :class:`~robustlr.lowrank.QRProjectedSGD`
========== ============================================ ==========================================

Every method uses the same ``MultiStepLR`` schedule. The low-rank methods keep the classifier at full rank
(still factorised), as the paper does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from robustlr.data import ImageDataset
from robustlr.lowrank import CondLR, QRProjectedSGD, to_lowrank
from robustlr.models import create

from .config import TrainConfig

__all__ = ["build_model", "build_optimizer", "build_scheduler", "model_args_for"]

_FACTORISATION = {"lowrank": "vanilla", "condlr": "condlr"}


def model_args_for(config: TrainConfig, data: ImageDataset) -> dict[str, Any]:
    """:func:`~robustlr.models.create` arguments of ``config.model`` sized for ``data``."""
    channels, height, _ = data.image_shape
    return {"name": config.model, "num_classes": data.num_classes, "in_channels": channels, "image_size": height}


def build_model(config: TrainConfig, model_args: Mapping[str, Any]) -> nn.Module:
    """A fresh model of ``model_args`` with ``config.method``'s layers (draws from the global torch RNG).

    Raises:
        ValueError: for an unknown model, or a rank that does not fit a layer (``[1, min(n, m)]``) or names a
            module that is not a Linear/Conv2d of the model.
    """
    model = create(**model_args)
    if config.method in _FACTORISATION:
        model = to_lowrank(model, config.rank, method=_FACTORISATION[config.method])
    return model


def build_optimizer(config: TrainConfig, model: nn.Module) -> Optimizer:
    """The optimiser of ``config.method`` over all of ``model``'s parameters."""
    common = {"lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
    if config.method == "condlr":
        return CondLR(model, tau=config.tau, grad_scale=config.grad_scale, theta=config.theta, **common)
    if config.method == "orthogonal":
        return QRProjectedSGD(model, **common)
    return SGD(model.parameters(), **common)


def build_scheduler(config: TrainConfig, optimizer: Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``MultiStepLR(milestones, gamma)``, stepped once per epoch."""
    return MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
