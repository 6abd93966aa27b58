"""The QR-projected SGD ("orthogonal dense") baseline of the CondLR paper (Savostianova et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim import SGD

from robustlr.lowrank.manifold import qr_retraction
from robustlr.lowrank.step_checks import (
    ParamsT,
    check_finite_gradients,
    check_hyperparameters,
    checked_scalar,
    parameter_names,
)

__all__ = ["QRProjectedSGD"]

class QRProjectedSGD(SGD):
    """"Projected SGD" / orthogonal dense baseline of the CondLR paper: SGD (with momentum), then a QR
    retraction of every weight that is flattened to ``rows × cols`` with ``rows ≤ cols``.

    After the SGD step each such weight (``p.ndim ≥ 2``, flattened to ``(p.shape[0], -1)``) is replaced by the
    matrix with orthonormal rows ``qf(Wᵀ)ᵀ`` (sign-fixed QR), so all its singular values are 1 (scale-free).
    Tall weights (more rows than columns, e.g. a first conv 64 × 27) and 1-D parameters (biases, BatchNorm)
    are left unconstrained and only get the SGD step, as in the reference code. The first step retracts
    weights that start off the manifold. ``params`` may be a model (its parameter names then appear in the
    errors) or parameters / param groups; ``lr``, ``momentum`` and ``weight_decay`` must be finite numbers >= 0.
    """

    def __init__(
        self,
        params: nn.Module | ParamsT,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        self._names: dict[Tensor, str] = {}
        if isinstance(params, nn.Module):  # its parameter names go into the errors
            self._names = parameter_names(params)
            params = params.parameters()
        super().__init__(params, lr=checked_scalar("lr", lr), momentum=checked_scalar("momentum", momentum),
                         weight_decay=checked_scalar("weight_decay", weight_decay), nesterov=nesterov)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """SGD step then QR retraction; like CondLR it first checks the hyperparameters of every group and that
        every gradient is finite (``ValueError`` naming it, nothing changed)."""
        check_hyperparameters(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_finite_gradients(self, self._names)
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.ndim >= 2 and p.shape[0] <= p[0].numel():
                    rows = qr_retraction(p.reshape(p.shape[0], -1).mT).mT
                    p.copy_(rows.reshape(p.shape))
        return loss
