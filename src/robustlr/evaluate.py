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

import math
import time
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attacks.projections import channel_svd, per_sample_norm
from .checks import check_device, check_int
from .evaluation.data import Data, iter_batches, num_batches
from .evaluation.guards import (
    ADVERSARIAL_STATS,
    adversarial_input,
    adversarial_stats,
    check_logits_shape,
    check_model_finite,
    clean_stats,
    declared_bound,
    raise_adversarial,
    raise_clean,
)
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
    nuclear: bool | None = None,
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
        nuclear: compute the mean nuclear norm of δ (an SVD of every channel of every batch, in float32) for every
            attack (``True``), for none (``False``), or (``None``, the default) for the low-rank attacks only
            (those with a ``rank`` attribute); where it is not computed ``mean_nuclear`` is NaN (``None`` in
            ``to_dict()``, "—" in reports).

    Host round trips: one per batch (every check of the batch — its images, its clean logits and labels, the
    results of every attack on the previous batch — read in one transfer) plus a constant per call (the model's
    weights, the last batch's attack results, the masks and sums at the end); the attacks' own are theirs.

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
            clean logits before it is attacked; the attack results of a batch with the next batch's checks (or
            at the end): an error names the attack and the batch.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if nuclear is not None and not isinstance(nuclear, bool):
        raise ValueError(f"nuclear must be True, False or None (only the low-rank attacks); got {nuclear!r}")
    if n is not None:
        n = check_int("n", n, 1)
    runs = build_runs(attacks, eps_grid)
    target = _resolve_device(model, device)
    batches, total = iter_batches(data, batch_size, n)
    check_model_finite(model)
    expected = num_batches(total, batch_size)
    tallies = [_Tally(run, hasattr(run.attack, "rank") if nuclear is None else nuclear) for run in runs]
    clean_correct: list[torch.Tensor] = []
    zero_gradients = probabilities = None
    start = time.perf_counter()
    with eval_mode(model), tqdm(total=None if expected is None else expected * len(runs), desc="evaluate",
                                unit="attack·batch", disable=not progress) as bar:
        for index, (x, y) in enumerate(batches):
            x, y = x.to(target), y.to(target, torch.long)
            where = "clean images in the first batch" if index == 0 else f"clean images in batch {index + 1}"
            logits, grad = _clean_pass(model, x, y, sanity, where, tallies)
            clean_correct.append(logits.argmax(dim=1) == y)
            if sanity:
                zeros, probs = zero_gradient_count(grad, x.shape[0], target), looks_like_probabilities(logits)
                zero_gradients = zeros if zero_gradients is None else zero_gradients + zeros
                probabilities = probs if probabilities is None else probabilities & probs
            for tally in tallies:
                tally.add(model, x, y, index, target)
                bar.update(1)
    flags = [] if zero_gradients is None else [zero_gradients, probabilities]
    values = _check_pending(tallies, [tally.norm_sums for tally in tallies] + flags)
    clean = torch.cat(clean_correct).cpu()
    results, offset = [], 0
    for tally in tallies:
        results.append(tally.result(clean, values[offset:offset + tally.norm_sums.numel()]))
        offset += tally.norm_sums.numel()
    clean_accuracy = fraction(clean)
    if sanity:
        zeros, probs = values[offset:]
        messages = sanity_warnings(clean.numel(), clean_accuracy, results, int(zeros), bool(probs))
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


def _check_pending(tallies: list[_Tally], first: list[torch.Tensor]) -> list[float]:
    """One transfer: the tensors ``first`` and the statistics of every attack result not yet checked; raise for a
    failed result (:func:`~robustlr.evaluation.guards.raise_adversarial`), return the values of ``first``."""
    waiting = [tally for tally in tallies if tally.pending is not None]
    parts = [t.reshape(-1).double() for t in first] + [tally.pending[0] for tally in waiting]
    values = torch.cat(parts).tolist()
    offset = sum(t.numel() for t in first)
    for tally in waiting:
        tally.raise_pending(values[offset:offset + ADVERSARIAL_STATS])
        offset += ADVERSARIAL_STATS
    return values[:sum(t.numel() for t in first)]


class _Tally:
    """Accumulates one run over batches, on the device: per-sample correctness, the sums of ``‖δ‖₂``, ``‖δ‖∞``
    and (``nuclear``) ``Σ_c ‖δ_c‖_*``, the statistics of the checks of the last batch's result (read with the next
    batch's checks); time in the attack on the host."""

    def __init__(self, run: AttackRun, nuclear: bool) -> None:
        self.run = run
        self.what = f"attacks[{run.name!r}]" + ("" if run.eps is None else f" at eps={run.eps:g}")
        self.nuclear = nuclear
        self.correct: list[torch.Tensor] = []
        self.norm_sums: torch.Tensor | None = None
        self.pending: tuple[torch.Tensor, int, int, float | None] | None = None  # stats, batch, n, bound
        self.seconds = 0.0

    def add(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int, device: torch.device) -> None:
        """Attack the batch ``(x, y)`` (the ``index``-th), check the shape and dtype of what the attack returned,
        and record the outcome and the statistics of its value checks."""
        tic = time.perf_counter()
        x_adv = self.run.attack(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - tic
        x_adv = adversarial_input(x_adv, x, self.what).to(dtype=x.dtype)
        with torch.no_grad():
            logits = check_logits_shape(model(x_adv), x.shape[0])
            self.correct.append(logits.argmax(dim=1) == y)
            stats = adversarial_stats(x_adv, x, self.run.norm, self.run.eps, logits)
            self.pending = (stats, index, x.shape[0], declared_bound(self.run.eps, self.run.norm, x, x_adv))
            delta = x_adv - x
            norms = [per_sample_norm(delta, "l2"), per_sample_norm(delta, "linf")]
            if self.nuclear:
                norms.append(channel_svd(delta, dtype=torch.float32).sum(dim=(1, 2)))
            sums = torch.stack([values.sum().double() for values in norms])
            self.norm_sums = sums if self.norm_sums is None else self.norm_sums + sums

    def raise_pending(self, stats: list[float]) -> None:
        """Raise for the result not yet checked, given its statistics read to the host; then none is pending."""
        if self.pending is not None:
            _, index, n, bound = self.pending
            self.pending = None
            raise_adversarial(stats, n, self.what, self.run.eps, self.run.norm, bound, f"of batch {index + 1}")

    def result(self, clean_correct: torch.Tensor, norm_sums: list[float]) -> AttackResult:
        """The :class:`AttackResult` of all batches added, given the norm sums read to the host."""
        correct = torch.cat(self.correct).cpu()
        robust = correct & clean_correct
        count = correct.numel()
        l2, linf, *nuc = norm_sums
        return AttackResult(
            attack=self.run.name,
            eps=self.run.eps,
            kind=self.run.kind,
            attack_repr=repr(self.run.attack),
            robust_accuracy=fraction(robust),
            mean_l2=l2 / count,
            mean_linf=linf / count,
            mean_nuclear=nuc[0] / count if nuc else math.nan,
            seconds=self.seconds,
            correct=correct,
            robust=robust,
            norm=self.run.norm,
        )


def _clean_pass(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, with_grad: bool, where: str, tallies: list[_Tally]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean logits and, with ``with_grad``, ``∇ₓ`` of the summed cross-entropy (``None`` if the output does not
    depend on ``x``).  Before the loss is formed, one transfer checks the images, the logits (shape, finite) and
    the labels (classes of the model), and the attack results of the previous batch (``tallies``)."""
    x_in = x.detach().requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        logits = check_logits_shape(model(x_in), y.shape[0])
        raise_clean(_check_pending(tallies, [clean_stats(x, logits, y)]), y.shape[0], logits.shape[1], where)
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
