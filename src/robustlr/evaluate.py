"""Robust accuracy of a model over several attacks and an ε grid, per-sample worst case, sanity checks.

>>> from robustlr.attacks import FGSM, PGD
>>> from robustlr.evaluate import at_eps, evaluate
>>> result = evaluate(model, (x, y), {
...     "pgd-l2": at_eps(lambda e: PGD(model, e, "l2")),    # evaluated at every ε of eps_grid
...     "fgsm": FGSM(model, 8 / 255),                         # a ready attack: evaluated at its own ε
... }, eps_grid=[0.0, 0.25, 0.5])
>>> result.clean_accuracy, result.worst_at(0.5).robust_accuracy, result.warnings

Every sample is attacked, also the misclassified ones (their perturbation norms are reported), but a sample
counts as robust only if it is classified correctly both clean and under the attack.  The worst case at a
budget ε counts a sample as robust only if it survives every attack of the same norm evaluated at ε (L2 and
L∞ attacks at one ε get one worst case each).

Nothing broken is measured (:mod:`robustlr.evaluation.guards`): a model with non-finite weights or logits, or an
attack returning anything but finite floating images in ``[0, 1]`` within its declared budget, is a ``ValueError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attacks.projections import per_sample_norm
from .checks import check_device, check_int
from .evaluation.data import Data, iter_batches, num_batches
from .evaluation.guards import check_adversarial, check_labels, check_logits, check_model_finite
from .evaluation.result import (
    AttackResult,
    EvaluationResult,
    WorstCase,
    fixed_worst_case,
    fraction,
    worst_cases_per_eps,
)
from .evaluation.sanity import (
    RobustnessWarning,
    emit,
    looks_like_probabilities,
    norm_notes,
    sanity_warnings,
    zero_gradient_count,
)
from .evaluation.specs import AttackFn, AttackRun, AttackSpec, at_eps, build_runs
from .modes import eval_mode

__all__ = ["evaluate", "at_eps", "AttackSpec", "EvaluationResult", "AttackResult", "WorstCase", "RobustnessWarning"]


def evaluate(
    model: nn.Module,
    data: Data,
    attacks: Mapping[str, AttackSpec | AttackFn],
    eps_grid: Iterable[float] | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    n: int | None = None,
    progress: bool = True,
    sanity: bool = True,
) -> EvaluationResult:
    """Clean and robust accuracy of ``model`` on ``data`` under every attack, with the per-ε worst case.

    Args:
        model: maps ``[0,1]`` images ``(N, C, H, W)`` to ``(N, num_classes)`` logits.  It is put in eval mode
            and every submodule's mode is restored afterwards (also on error).
        data: an ``(x, y)`` tensor pair, a torch Dataset yielding ``(x, y)``, or a DataLoader; batches are
            re-chunked to ``batch_size`` in the source's order.
        attacks: ``name -> spec``: ``at_eps(factory)`` (``factory(eps)`` returns an attack, evaluated at every
            ε of ``eps_grid``) or a ready attack ``atk(x, y) -> x_adv`` (evaluated once, at
            ``getattr(atk, "eps", None)``).  See :mod:`robustlr.evaluation.specs`.
        eps_grid: budgets for the ``at_eps`` attacks (finite, ≥ 0; sorted and de-duplicated); required if
            and only if some attack is an ``at_eps`` factory.
        batch_size: samples per batch (an integer ≥ 1, ``np.int64`` included).
        device: where batches go, a device this machine has (:func:`robustlr.checks.check_device`); default
            the device of the model's parameters (CPU without parameters).  The model itself is not moved.
        n: evaluate only the first ``n`` samples (an integer ≥ 1); default all.
        progress: show a tqdm bar over batches × attacks.
        sanity: run the sanity checks (monotonicity in ε, large-ε accuracy, zero input gradients,
            probability outputs); failures are returned in ``result.warnings`` and issued as
            :class:`RobustnessWarning`, never raised.  With or without them, a note says when attacks of
            several norms ran at one ε (their worst cases are kept apart).

    Returns:
        an :class:`EvaluationResult` (``to_dict()`` for JSON; per-sample masks kept in the object), with one
        worst case per ε and norm (``result.worst_at(eps, norm=...)``).

    Raises:
        ValueError: for an empty or malformed ``data`` (images must be finite floats in ``[0, 1]``), ``x``/``y``
            of different lengths, labels out of the model's range, an empty ``attacks``, a spec that is neither
            ``at_eps(...)`` nor callable as ``atk(x, y)``, a factory whose attack declares another ``eps`` than
            its grid ε, a bad ``eps_grid`` (a ``bool`` is no number), ``batch_size`` or ``n`` < 1, a ``device``
            this machine does not have, a model with NaN/inf in a parameter or buffer or returning NaN/inf
            logits, or an attack returning a tensor of another shape, of an integer dtype, with non-finite
            values, values outside ``[0, 1]`` or (when it declares its ``norm``) a perturbation larger than its
            ε.  The arguments and the model's weights are checked before any attack runs; each batch and its
            clean logits before it is attacked; each attack result as it is returned.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if n is not None:
        n = check_int("n", n, 1)
    runs = build_runs(attacks, eps_grid)
    target = _resolve_device(model, device)
    batches, total = iter_batches(data, batch_size, n)
    check_model_finite(model)
    expected = num_batches(total, batch_size)
    tallies = [_Tally(run) for run in runs]
    clean_correct: list[torch.Tensor] = []
    zero_gradients, probabilities = 0, True
    start = time.perf_counter()
    with eval_mode(model), tqdm(total=None if expected is None else expected * len(runs), desc="evaluate",
                                unit="attack·batch", disable=not progress) as bar:
        for index, (x, y) in enumerate(batches):
            x, y = x.to(target), y.to(target, torch.long)
            where = "clean images in the first batch" if index == 0 else f"clean images in batch {index + 1}"
            logits, grad = _clean_pass(model, x, y, with_grad=sanity, where=where)
            clean_correct.append((logits.argmax(dim=1) == y).cpu())
            if sanity:
                zero_gradients += zero_gradient_count(grad, x.shape[0])
                probabilities = probabilities and looks_like_probabilities(logits)
            for tally in tallies:
                tally.add(model, x, y, target)
                bar.update(1)
    clean = torch.cat(clean_correct)
    results = [tally.result(clean) for tally in tallies]
    clean_accuracy = fraction(clean)
    if sanity:
        messages = sanity_warnings(clean.numel(), clean_accuracy, results, zero_gradients, probabilities)
    else:
        messages = norm_notes(results)
    emit(messages)
    return EvaluationResult(
        n=clean.numel(),
        clean_accuracy=clean_accuracy,
        device=str(target),
        seconds=time.perf_counter() - start,
        attacks=results,
        worst_case=worst_cases_per_eps(results),
        worst_case_fixed=fixed_worst_case(results),
        warnings=messages,
        clean_correct=clean,
    )


class _Tally:
    """Accumulates one run over batches: per-sample correctness, norm sums, time in the attack."""

    def __init__(self, run: AttackRun) -> None:
        self.run = run
        self.what = f"attacks[{run.name!r}]" + ("" if run.eps is None else f" at eps={run.eps:g}")
        self.correct: list[torch.Tensor] = []
        self.norm_sums = {"l2": 0.0, "linf": 0.0, "nuc": 0.0}
        self.seconds = 0.0

    def add(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        """Attack the batch ``(x, y)``, check what the attack returned and record the outcome."""
        tic = time.perf_counter()
        x_adv = self.run.attack(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - tic
        x_adv = check_adversarial(x_adv, x, self.what, self.run.eps, self.run.norm).to(dtype=x.dtype)
        with torch.no_grad():
            logits = check_logits(model(x_adv), x.shape[0], f"images made by {self.what}")
            self.correct.append((logits.argmax(dim=1) == y).cpu())
            delta = x_adv - x
            sums = torch.stack([per_sample_norm(delta, norm).sum().float() for norm in self.norm_sums]).cpu()
            for norm, value in zip(self.norm_sums, sums.tolist()):
                self.norm_sums[norm] += value

    def result(self, clean_correct: torch.Tensor) -> AttackResult:
        """The :class:`AttackResult` of all batches added."""
        correct = torch.cat(self.correct)
        robust = correct & clean_correct
        count = correct.numel()
        return AttackResult(
            attack=self.run.name,
            eps=self.run.eps,
            kind=self.run.kind,
            attack_repr=repr(self.run.attack),
            robust_accuracy=fraction(robust),
            mean_l2=self.norm_sums["l2"] / count,
            mean_linf=self.norm_sums["linf"] / count,
            mean_nuclear=self.norm_sums["nuc"] / count,
            seconds=self.seconds,
            correct=correct,
            robust=robust,
            norm=self.run.norm,
        )


def _clean_pass(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, with_grad: bool, where: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean logits (checked: shape, finite, labels in range) and, with ``with_grad``, ``∇ₓ`` of the summed
    cross-entropy (``None`` if the output does not depend on ``x``)."""
    x_in = x.detach().clone().requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        logits = check_logits(model(x_in), y.shape[0], where)
        check_labels(logits, y)
        grad = None
        if with_grad and logits.requires_grad:
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
    return logits.detach(), grad


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` checked by :func:`robustlr.checks.check_device`, else the model's (CPU without parameters)."""
    if device is not None:
        return check_device("device", device)
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(params, None)
    return torch.device("cpu") if first is None else check_device("the model's device", first.device)
