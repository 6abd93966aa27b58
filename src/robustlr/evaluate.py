"""Robust accuracy of a model over several attacks and an ε grid, per-sample worst case, sanity checks.

>>> from robustlr.attacks import FGSM, PGD
>>> from robustlr.evaluate import at_eps, evaluate
>>> result = evaluate(model, (x, y), {
...     "pgd-l2": at_eps(lambda e: PGD(model, e, "l2")),    # evaluated at every ε of eps_grid
...     "fgsm": FGSM(model, 8 / 255),                         # a ready attack: evaluated at its own ε
... }, eps_grid=[0.0, 0.25, 0.5])
>>> result.clean_accuracy, result.worst_at(0.5).robust_accuracy, result.warnings
>>> evaluate(model, (x, y), eps_grid=[8 / 255], suite="autoattack", norm="linf")   # AutoAttack's standard version

Every sample is attacked, also the misclassified ones (their perturbation norms are reported), but a sample
counts as robust only if it is classified correctly both clean and under the attack.  The worst case at a
budget ε counts a sample as robust only if it survives every attack of the same norm evaluated at ε (L2 and
L∞ attacks at one ε get one worst case each).  With ``cascade=True`` (the default of a suite) the attacks of each
(ε, norm) group run in order, each only on the points still robust (:mod:`robustlr.evaluation.cascade`): the
worst case is the same, the later attacks see fewer points.

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

from .checks import check_device, check_int
from .evaluation.cascade import cascade_stages, iterations
from .evaluation.data import Data, iter_batches, num_batches
from .evaluation.guards import (
    ADVERSARIAL_STATS,
    CLEAN_STATS,
    check_fits,
    check_logits_shape,
    check_model_finite,
    clean_stats,
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
    class_warnings,
    emit,
    forward_spread,
    looks_like_probabilities,
    norm_notes,
    sanity_warnings,
    upper_bound_notes,
    zero_gradient_count,
)
from .evaluation.specs import AttackFn, AttackSpec, at_eps, build_runs
from .evaluation.suites import SUITES, with_suite
from .evaluation.tally import RunTally
from .modes import eval_mode

__all__ = ["evaluate", "at_eps", "AttackSpec", "EvaluationResult", "AttackResult", "WorstCase", "RobustnessWarning",
           "SUITES"]


def evaluate(
    model: nn.Module,
    data: Data,
    attacks: Mapping[str, AttackSpec | AttackFn] | None = None,
    eps_grid: Iterable[float] | None = None,
    *,
    suite: str | None = None,
    norm: str | None = None,
    cascade: bool | None = None,
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
            ``getattr(atk, "eps", None)``).  See :mod:`robustlr.evaluation.specs`.  With a ``suite`` they run
            after the suite's attacks (their names must differ from the suite's); without one they are required.
        eps_grid: budgets for the ``at_eps`` attacks and the suite (finite, ≥ 0; sorted and de-duplicated);
            required if and only if some attack is an ``at_eps`` factory or a suite is given.
        suite: ``"autoattack"`` (APGD-CE → APGD-T → FAB-T → Square, AutoAttack's standard version) or
            ``"fast"`` (PGD → LoRa-PGD → APGD-CE), at every ε of ``eps_grid`` in ``norm``
            (:mod:`robustlr.evaluation.suites`; :func:`~robustlr.evaluation.suites.suite_attacks` builds one with
            other settings); ``None``: only ``attacks``.
        norm: the threat model of the suite, ``"linf"`` or ``"l2"``; required with a suite, refused without.
        cascade: run the attacks of each (ε, norm) group in order, each only on the points still robust (clean-
            correct and correct under every earlier attack of the group).  A speed option: the worst case is the
            same (robustlr's attacks treat every point on its own); each attack's row then gives the group's
            robust accuracy after it, the points it attacked (``attacked``) and its place (``stage``), see
            :meth:`EvaluationResult.stage_rows`.  Ready attacks without a budget are not cascaded.  Default:
            ``True`` with a suite, else ``False``.
        batch_size: samples per batch (an integer ≥ 1, ``np.int64`` included).
        device: where batches go, a device this machine has (:func:`robustlr.checks.check_device`); default
            the device of the model's parameters (CPU without parameters).  The model itself is not moved.
        n: evaluate only the first ``n`` samples (an integer ≥ 1); default all.
        progress: show a tqdm bar over batches × attacks.
        sanity: run the sanity checks (:mod:`robustlr.evaluation.sanity`: monotonicity in ε, large-ε accuracy,
            zero input gradients, probability outputs, a randomised model, too few classes for the targeted
            attacks, gradient masking revealed by FAB / Square); failures are returned in ``result.warnings``
            and issued as :class:`RobustnessWarning`, never raised.  With or without them, a warning says when
            attacks of several norms ran at one ε (their worst cases are kept apart), and ``result.notes`` says
            when every attack follows a loss gradient (the robust accuracy is then an upper bound).
        nuclear: compute the mean nuclear norm of δ (an SVD of every channel of every batch, in float32) for every
            attack (``True``), for none (``False``), or (``None``, the default) for the low-rank attacks only
            (those with a ``rank`` attribute); where it is not computed ``mean_nuclear`` is NaN (``None`` in
            ``to_dict()``, "—" in reports).

    Host round trips: one per batch (every check of the batch — its images, its clean logits and labels, the
    results of every attack on the previous batch, and with the cascade the number of points each stage attacks
    next — read in one transfer), with the cascade one more per stage after the first of the deepest group (the
    last batches go through the later stages), plus a constant per call (the model's weights, the last attack
    results, the masks and sums at the end); the attacks' own are theirs.

    Returns:
        an :class:`EvaluationResult` (``to_dict()`` for JSON; per-sample masks kept in the object), with one
        worst case per ε and norm (``result.worst_at(eps, norm=...)``).

    Raises:
        ValueError: for an empty or malformed ``data`` (images must be finite floats in ``[0, 1]``), ``x``/``y``
            of different lengths, labels out of the model's range, neither ``attacks`` nor a suite, an empty
            ``attacks``, a spec that is neither ``at_eps(...)`` nor callable as ``atk(x, y)``, a factory whose
            attack declares another ``eps`` than its grid ε, an unknown ``suite`` (the error names the allowed
            ones), a suite without ``norm`` or ``eps_grid``, a ``norm`` without a suite, an attack named like one
            of the suite's, a ``cascade`` that is not a bool or None, a bad ``eps_grid`` (a ``bool`` is no
            number), ``batch_size`` or ``n`` < 1, a ``device`` this machine does not have, an attack that is not
            defined on the images or the model's classes (a DLR loss and 2 classes, Square L2 and images under
            5×5, a rank larger than the image side: checked on the first batch), a model with NaN/inf
            in a parameter or buffer or returning NaN/inf logits, or an attack returning a tensor of another
            shape, of an integer dtype, with non-finite values, values outside ``[0, 1]`` or (when it declares
            its ``norm``) a perturbation larger than its ε.  The arguments and the model's weights are checked
            before any attack runs; each batch and its clean logits before it is attacked; the attack results of
            a batch with the next batch's checks (or at the end): an error names the attack and the batch.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if nuclear is not None and not isinstance(nuclear, bool):
        raise ValueError(f"nuclear must be True, False or None (only the low-rank attacks); got {nuclear!r}")
    if cascade is not None and not isinstance(cascade, bool):
        raise ValueError(f"cascade must be True, False or None (True with a suite, else False); got {cascade!r}")
    if n is not None:
        n = check_int("n", n, 1)
    runs = build_runs(with_suite(model, attacks, suite, norm, eps_grid), eps_grid)
    cascade = suite is not None if cascade is None else cascade
    target = _resolve_device(model, device)
    batches, total = iter_batches(data, batch_size, n)
    check_model_finite(model)
    tallies: list[RunTally] = []
    for run, stage in zip(runs, cascade_stages(runs, cascade)):
        previous = None if stage is None or stage.previous is None else tallies[stage.previous]
        tallies.append(RunTally(run, hasattr(run.attack, "rank") if nuclear is None else nuclear, target,
                                None if stage is None else stage.position, previous))
    depth = max(tally.lag() for tally in tallies)
    expected = num_batches(total, batch_size)
    clean_correct: list[torch.Tensor] = []
    window: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    zero_gradients = probabilities = spread = None
    classes = 0
    start = time.perf_counter()
    with eval_mode(model), tqdm(total=None if expected is None else expected * len(runs), desc="evaluate",
                                unit="attack·batch", disable=not progress) as bar:
        for index, batch in iterations(batches, depth):
            first: list[torch.Tensor] = []
            if batch is not None:
                x, y = batch[0].to(target), batch[1].to(target, torch.long)
                window[index] = (x, y)
                x_in = x.detach().requires_grad_(sanity)
                with torch.set_grad_enabled(sanity):
                    logits = check_logits_shape(model(x_in), y.shape[0])
                clean_correct.append(logits.detach().argmax(dim=1) == y)
                first.append(clean_stats(x, logits, y))
                if index == 0:
                    classes = logits.shape[1]
                    spread = forward_spread(model, x, logits) if sanity else None
            active = [(tally, index - tally.lag()) for tally in tallies
                      if 0 <= index - tally.lag() < len(clean_correct)]
            picks = [None if tally.stage is None else tally.selection(at, clean_correct) for tally, at in active]
            values = _check_pending(tallies, first + [pick[0] for pick in picks if pick is not None])
            if batch is not None:
                where = "clean images in the first batch" if index == 0 else f"clean images in batch {index + 1}"
                raise_clean(values[:CLEAN_STATS], y.shape[0], logits.shape[1], where)
                if index == 0:
                    check_fits(runs, tuple(x.shape), classes)
                if sanity:
                    grad = _input_gradient(logits, x_in, y)
                    zeros, probs = zero_gradient_count(grad, x.shape[0], target), looks_like_probabilities(logits)
                    zero_gradients = zeros if zero_gradients is None else zero_gradients + zeros
                    probabilities = probs if probabilities is None else probabilities & probs
            counts = iter(values[len(values) - sum(pick is not None for pick in picks):])
            for (tally, at), pick in zip(active, picks):
                tally.add(model, *window[at], at, target, None if pick is None else pick[1][:int(next(counts))])
                bar.update(1)
            window.pop(index - depth, None)
    flags = [] if zero_gradients is None else [zero_gradients, probabilities, spread]
    values = _check_pending(tallies, [tally.norm_sums for tally in tallies] + flags)
    clean = torch.cat(clean_correct).cpu()
    results, offset = [], 0
    for tally in tallies:
        results.append(tally.result(clean, values[offset:offset + tally.norm_sums.numel()]))
        offset += tally.norm_sums.numel()
    clean_accuracy = fraction(clean)
    if sanity:
        zeros, probs, spread_value = values[offset:]
        messages = sanity_warnings(clean.numel(), clean_accuracy, results, int(zeros), bool(probs), spread_value,
                                   class_warnings(runs, classes))
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
        notes=upper_bound_notes(results),
        cascade=cascade,
    )


def _check_pending(tallies: list[RunTally], first: list[torch.Tensor]) -> list[float]:
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


def _input_gradient(logits: torch.Tensor, x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """``∇ₓ`` of the summed cross-entropy of the clean logits (``None`` if the output does not depend on ``x``)."""
    if not logits.requires_grad:
        return None
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
    return grad


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` checked by :func:`robustlr.checks.check_device`, else the model's (CPU without parameters)."""
    if device is not None:
        return check_device("device", device)
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(params, None)
    return torch.device("cpu") if first is None else check_device("the model's device", first.device)
