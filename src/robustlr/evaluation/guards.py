"""What an evaluation refuses to measure: a broken model, broken logits, a broken adversarial batch.

A number computed from a model with NaN weights, or from an "attack" that returns ``x + 5``, a ``uint8`` image
or a perturbation larger than its budget, is not a robustness number.  These checks turn each of them into a
``ValueError`` that names the culprit:

* :func:`check_model_finite` — every floating parameter and buffer of the model is finite (once per evaluation);
* :func:`clean_stats` / :func:`raise_clean` — a batch's images are finite and in ``[0, 1]``, the model's output
  on them is ``(N, K)`` finite logits, and the labels are classes of the model;
* :func:`check_fits` — every attack is defined on the batch's image shape and ``K`` classes (the DLR losses need 3
  or 4, Square L2 5×5 images, a rank must fit the image), checked on the first batch, before any attack runs;
* :func:`check_adversarial` — an attack's returned batch is a floating tensor shaped like ``x``, finite, within
  ``[0, 1]``, and (when the attack declares its norm and the run has a budget) within ``‖δ‖ ≤ ε`` up to the
  round-off of its dtype, and the model's logits on it are finite.

Shapes and dtypes are checked on the host; everything that depends on values is reduced on the device to a few
float64 numbers (:func:`clean_stats`, :func:`adversarial_stats`), so that the caller reads the statistics of many
checks in one transfer (``evaluate``: one per batch for every check of the batch) and turns them into errors with
:func:`raise_clean` / :func:`raise_adversarial`, which compute nothing more: the details of a failure are in the
statistics.  :func:`check_model_finite` and :func:`check_adversarial` (for single batches) read once each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..attacks.projections import per_sample_norm
from .specs import AttackRun

__all__ = ["RANGE_TOL", "BUDGET_RTOL", "CLEAN_STATS", "ADVERSARIAL_STATS", "check_model_finite", "check_logits_shape",
           "check_fits", "image_stats", "raise_images", "clean_stats", "raise_clean", "adversarial_input",
           "adversarial_stats", "raise_adversarial", "declared_bound", "check_adversarial", "budget_bound"]

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


def check_logits_shape(logits: object, n: int) -> torch.Tensor:
    """Return ``logits`` if it is an ``(n, K)`` tensor (checked on the host), else ``ValueError``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (N, num_classes) = ({n}, K), got {got}")
    return logits


def check_fits(runs: Iterable[AttackRun], shape: tuple[int, ...], classes: int) -> None:
    """``ValueError`` for the first run whose attack is not defined on images of ``shape`` and a model of
    ``classes`` classes (its ``check_fits``, :meth:`robustlr.attacks.base.Attack.check_fits`: DLR losses need 3 or
    4 classes, Square L2 images of 5×5, a rank must fit the image), prefixed with the attack's name."""
    for run in runs:
        check = getattr(run.attack, "check_fits", None)
        if callable(check):
            try:
                check(shape, classes)
            except ValueError as error:
                raise ValueError(f"attack {run.name!r}: {error}") from None


def _bad_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows of ``logits`` holding a NaN or an infinity (a 0-d float64 tensor)."""
    return (~torch.isfinite(logits.detach())).any(dim=1).sum().double()


def image_stats(x: torch.Tensor) -> torch.Tensor:
    """On the device: ``[x finite, min x, max x]`` (float64)."""
    xd = x.detach()
    return torch.stack([torch.isfinite(xd).all().double(), xd.min().double(), xd.max().double()])


def raise_images(finite: float, lo: float, hi: float) -> None:
    """``ValueError`` naming ``data`` for :func:`image_stats` (read to the host) of images that are not finite or
    not in ``[0, 1]`` (± :data:`RANGE_TOL`)."""
    if not finite:
        raise ValueError("data must hold finite images, got NaN or inf values")
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(f"data must hold images with values in [0, 1] (normalisation belongs inside the model: "
                         f"robustlr.models.Normalize), got values in [{lo:.6g}, {hi:.6g}]")


def clean_stats(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """On the device: ``[x finite, min x, max x, non-finite rows of logits, min y, max y]`` (float64)."""
    return torch.cat([image_stats(x), torch.stack([_bad_rows(logits), y.min().double(), y.max().double()])])


CLEAN_STATS = 6
"""Length of :func:`clean_stats`."""


def raise_clean(stats: list[float], n: int, classes: int, where: str) -> None:
    """``ValueError`` for the first failed check of :func:`clean_stats` read to the host as ``stats``: images not
    finite or outside ``[0, 1]`` (± :data:`RANGE_TOL`), non-finite logits (``where`` says for which images, e.g.
    ``"clean images in the first batch"``), labels outside ``[0, classes)``."""
    finite, lo, hi, bad_rows, y_lo, y_hi = stats
    raise_images(finite, lo, hi)
    _raise_bad_rows(bad_rows, n, where)
    if y_lo < 0 or y_hi >= classes:
        raise ValueError(f"data must hold labels in [0, {classes - 1}] (the model's classes), "
                         f"got labels in [{int(y_lo)}, {int(y_hi)}]")


def _raise_bad_rows(bad_rows: float, n: int, where: str) -> None:
    if bad_rows:
        raise ValueError(
            f"model returned non-finite logits (NaN/inf) for {int(bad_rows)} of {n} {where}: check its weights "
            "(a diverged training or a broken checkpoint?) and its numerics (overflow in half precision?)"
        )


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


def adversarial_input(x_adv: object, x: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``x_adv`` (detached, on ``x``'s device) if it is a floating tensor shaped like ``x`` (checked on the
    host; an integer or bool image is an error, never cast silently), else ``ValueError`` naming ``what``."""
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise ValueError(f"{what} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    if not x_adv.is_floating_point():
        raise ValueError(
            f"{what} must return floating-point images in [0, 1] like x ({x.dtype}), got a {x_adv.dtype} tensor "
            "(an integer image is not rescaled or cast silently)"
        )
    return x_adv.detach().to(x.device)


def adversarial_stats(x_adv: torch.Tensor, x: torch.Tensor, norm: str | None, eps: float | None,
                      logits: torch.Tensor | None = None) -> torch.Tensor:
    """On the device: ``[x_adv finite, min, max, worst ‖x_adv − x‖ (0 without a budget), its sample, non-finite
    rows of logits (0 without logits)]`` (float64); the norm is computed in float32, per sample."""
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    worst, where = zero, zero
    if norm is not None and eps is not None:
        norms = per_sample_norm(x_adv.float() - x.detach().float(), norm)
        worst, where = norms.max().double(), norms.argmax().double()
    bad_rows = zero if logits is None else _bad_rows(logits)
    return torch.stack([torch.isfinite(x_adv).all().double(), x_adv.min().double(), x_adv.max().double(), worst,
                        where, bad_rows])


ADVERSARIAL_STATS = 6
"""Length of :func:`adversarial_stats`."""


def raise_adversarial(stats: list[float], n: int, what: str, eps: float | None, norm: str | None,
                      bound: float | None, where: str = "of the batch") -> None:
    """``ValueError`` for the first failed check of :func:`adversarial_stats` of ``n`` images, read to the host as
    ``stats``: non-finite images, values outside ``[0, 1]`` (± :data:`RANGE_TOL`), a perturbation over ``bound``
    (:func:`budget_bound`, ``None`` without a budget; the error names ε, the worst sample — ``where`` says of
    which batch — its norm and the bound), non-finite logits on the images."""
    finite, lo, hi, worst, sample, bad_rows = stats
    if not finite:
        raise ValueError(f"{what} must return finite images, got NaN or inf values")
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(f"{what} must return images with values in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")
    if bound is not None and worst > bound:
        raise ValueError(
            f"{what} must keep every perturbation within its budget, ‖x_adv − x‖_{norm} <= eps={eps:g} (the "
            f"norm the attack declares), got {worst:.6g} for sample {int(sample)} {where} "
            f"(bound with round-off: {bound:.6g})"
        )
    _raise_bad_rows(bad_rows, n, f"images made by {what}")


def declared_bound(eps: float | None, norm: str | None, x: torch.Tensor, x_adv: torch.Tensor) -> float | None:
    """:func:`budget_bound` when the run has a budget and the attack declares its norm, else ``None``."""
    return None if norm is None or eps is None else budget_bound(eps, norm, x, x_adv)


def check_adversarial(
    x_adv: object, x: torch.Tensor, what: str, eps: float | None, norm: str | None
) -> torch.Tensor:
    """Return ``x_adv`` (detached, on ``x``'s device) if it is a valid adversarial batch for ``x``, with one
    device-to-host transfer.

    Checked, in this order (``what`` names the attack in the error, e.g. ``"attacks['pgd'] at eps=0.5"``):
    a tensor of ``x``'s shape; a floating dtype (an integer or bool image is an error, never cast silently);
    finite; values in ``[0, 1]`` (± :data:`RANGE_TOL`); and, when both ``norm`` (the attack's declared threat
    model) and ``eps`` are given, every sample's ``‖x_adv − x‖`` in that norm, computed in float32, at most
    :func:`budget_bound`.  The error for the budget names ε, the worst sample, its norm and the bound.
    """
    x_adv = adversarial_input(x_adv, x, what)
    raise_adversarial(adversarial_stats(x_adv, x, norm, eps).tolist(), x.shape[0], what, eps, norm,
                      declared_bound(eps, norm, x, x_adv))
    return x_adv
