"""What an evaluation refuses to measure: a broken model, broken logits, a broken adversarial batch.

A number computed from a model with NaN weights, or from an "attack" that returns ``x + 5``, a ``uint8`` image
or a perturbation larger than its budget, is not a robustness number.  These checks turn each of them into a
``ValueError`` that names the culprit:

* :func:`check_model_finite` — every floating parameter and buffer of the model is finite (once per evaluation);
* :func:`check_logits` — the model's output is ``(N, K)`` finite logits (clean and adversarial passes);
* :func:`check_labels` — the labels are classes of the model;
* :func:`check_adversarial` — an attack's returned batch is a floating tensor shaped like ``x``, finite, within
  ``[0, 1]``, and (when the attack declares its norm and the run has a budget) within ``‖δ‖ ≤ ε`` up to the
  round-off of its dtype.

Each check costs at most one device-to-host transfer per batch; the details of a failure are computed only when
it fails.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..attacks.projections import per_sample_norm

__all__ = ["RANGE_TOL", "BUDGET_RTOL", "check_model_finite", "check_logits", "check_labels", "check_adversarial",
           "budget_bound"]

RANGE_TOL = 1e-6
"""Returned images may leave ``[0, 1]`` by at most this much."""
BUDGET_RTOL = 1e-4
"""Relative slack of the budget check ``‖δ‖ ≤ ε·(1 + BUDGET_RTOL) + round-off``."""
_ROUND_OFF_ULPS = 4
"""Round-off allowed per entry of δ, in machine epsilons of the coarser of the two dtypes."""


def check_model_finite(model: object) -> None:
    """``ValueError`` naming the first floating parameter or buffer of ``model`` that holds NaN or inf.

    Not an ``nn.Module`` (a plain callable): nothing to check.  Uninitialised (lazy) parameters are skipped.
    One device-to-host transfer for the whole model.
    """
    if not isinstance(model, nn.Module):
        return
    named = [(f"parameter {name!r}", t) for name, t in model.named_parameters()]
    named += [(f"buffer {name!r}", t) for name, t in model.named_buffers()]
    named = [(what, t) for what, t in named
             if (t.is_floating_point() or t.is_complex()) and not nn.parameter.is_lazy(t) and t.numel()]
    if not named:
        return
    home = named[0][1].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(home) for _, t in named]).cpu()
    if bool(finite.all()):
        return
    what, tensor = named[int((~finite).nonzero()[0])]
    bad = int((~torch.isfinite(tensor.detach())).sum())
    raise ValueError(
        f"model has non-finite values (NaN/inf) in {what}: {bad} of {tensor.numel()} entries; its logits are "
        "meaningless (a diverged training or a broken checkpoint?): fix or reload the weights"
    )


def check_logits(logits: object, n: int, where: str) -> torch.Tensor:
    """Return ``logits`` if it is a finite ``(n, K)`` tensor; else ``ValueError`` saying ``where`` it came from
    (e.g. ``"clean images in the first batch"``) and, for NaN/inf, how many rows are affected."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (N, num_classes) = ({n}, K), got {got}")
    bad_rows = int((~torch.isfinite(logits.detach())).any(dim=1).sum())
    if bad_rows:
        raise ValueError(
            f"model returned non-finite logits (NaN/inf) for {bad_rows} of {n} {where}: check its weights "
            "(a diverged training or a broken checkpoint?) and its numerics (overflow in half precision?)"
        )
    return logits


def check_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    """``ValueError`` naming ``data`` unless every label is a class of the model (``0 ≤ y < K``)."""
    lo, hi = (int(v) for v in torch.stack([y.min(), y.max()]).cpu())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(f"data must hold labels in [0, {logits.shape[1] - 1}] (the model's classes), "
                         f"got labels in [{lo}, {hi}]")


def budget_bound(eps: float, norm: str, x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """The largest per-sample ``‖x_adv − x‖`` accepted for budget ``eps`` in ``norm``.

    ``ε·(1 + max(BUDGET_RTOL, 4·u)) + 4·u·s`` with ``u`` the machine epsilon of the coarser dtype of ``x`` and
    ``x_adv`` (float32: 1.2e-7, float16: 9.8e-4, bfloat16: 7.8e-3) and ``s`` = 1 for L∞, ``√(entries per
    sample)`` for L2: the round-off of storing ``x + δ`` in that dtype, never a real violation.
    """
    unit = max(torch.finfo(x.dtype).eps, torch.finfo(x_adv.dtype).eps)
    scale = 1.0 if norm == "linf" else math.sqrt(max(1, x[0].numel()))
    slack = _ROUND_OFF_ULPS * unit
    return eps * (1 + max(BUDGET_RTOL, slack)) + slack * scale


def check_adversarial(
    x_adv: object, x: torch.Tensor, what: str, eps: float | None, norm: str | None
) -> torch.Tensor:
    """Return ``x_adv`` (detached, on ``x``'s device) if it is a valid adversarial batch for ``x``.

    Checked, in this order (``what`` names the attack in the error, e.g. ``"attacks['pgd'] at eps=0.5"``):
    a tensor of ``x``'s shape; a floating dtype (an integer or bool image is an error, never cast silently);
    finite; values in ``[0, 1]`` (± :data:`RANGE_TOL`); and, when both ``norm`` (the attack's declared threat
    model) and ``eps`` are given, every sample's ``‖x_adv − x‖`` in that norm, computed in float32, at most
    :func:`budget_bound`.  The error for the budget names ε, the worst sample, its norm and the bound.
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise ValueError(f"{what} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    if not x_adv.is_floating_point():
        raise ValueError(
            f"{what} must return floating-point images in [0, 1] like x ({x.dtype}), got a {x_adv.dtype} tensor "
            "(an integer image is not rescaled or cast silently)"
        )
    x_adv = x_adv.detach().to(x.device)
    flags = [torch.isfinite(x_adv).all(), ((x_adv >= -RANGE_TOL) & (x_adv <= 1 + RANGE_TOL)).all()]
    norms = None
    if norm is not None and eps is not None:
        norms = per_sample_norm(x_adv.float() - x.detach().float(), norm)
        bound = budget_bound(eps, norm, x, x_adv)
        flags.append((norms <= bound).all())
    ok = torch.stack(flags).cpu()
    if not ok[0]:
        raise ValueError(f"{what} must return finite images, got NaN or inf values")
    if not ok[1]:
        lo, hi = (float(v) for v in torch.stack([x_adv.min(), x_adv.max()]).float().cpu())
        raise ValueError(f"{what} must return images with values in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")
    if norms is not None and not ok[2]:
        worst = int(norms.argmax())
        raise ValueError(
            f"{what} must keep every perturbation within its budget, ‖x_adv − x‖_{norm} <= eps={eps:g} (the norm "
            f"the attack declares), got {float(norms[worst]):.6g} for sample {worst} of the batch "
            f"(bound with round-off: {bound:.6g})"
        )
    return x_adv
