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
budget ε counts a sample as robust only if it survives every attack evaluated at ε.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attacks.projections import per_sample_norm
from .checks import check_int
from .evaluation.data import Data, iter_batches, num_batches
from .evaluation.result import (
    AttackResult,
    EvaluationResult,
    WorstCase,
    fixed_worst_case,
    fraction,
    worst_cases_per_eps,
)
from .evaluation.sanity import RobustnessWarning, emit, looks_like_probabilities, sanity_warnings, zero_gradient_count
from .evaluation.specs import AttackFn, AttackRun, AttackSpec, at_eps, build_runs

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
        batch_size: samples per batch (≥ 1).
        device: where batches go; default the device of the model's parameters (CPU without parameters).
            The model itself is not moved.
        n: evaluate only the first ``n`` samples (≥ 1); default all.
        progress: show a tqdm bar over batches × attacks.
        sanity: run the sanity checks (monotonicity in ε, large-ε accuracy, zero input gradients,
            probability outputs); failures are returned in ``result.warnings`` and issued as
            :class:`RobustnessWarning`, never raised.

    Returns:
        an :class:`EvaluationResult` (``to_dict()`` for JSON; per-sample masks kept in the object).

    Raises:
        ValueError: for an empty or malformed ``data``, ``x``/``y`` of different lengths, labels out of the
            model's range, an empty ``attacks``, a spec that is neither ``at_eps(...)`` nor callable as
            ``atk(x, y)``, a bad ``eps_grid``, ``batch_size`` or ``n`` < 1, an unknown ``device``, or an attack
            returning a tensor of another shape or non-finite values.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if n is not None:
        check_int("n", n, 1)
    runs = build_runs(attacks, eps_grid)
    target = _resolve_device(model, device)
    batches, total = iter_batches(data, batch_size, n)
    expected = num_batches(total, batch_size)
    tallies = [_Tally(run) for run in runs]
    clean_correct: list[torch.Tensor] = []
    zero_gradients, probabilities = 0, True
    start = time.perf_counter()
    modes = _enter_eval(model)
    try:
        with tqdm(total=None if expected is None else expected * len(runs), desc="evaluate", unit="attack·batch",
                  disable=not progress) as bar:
            for x, y in batches:
                x, y = x.to(target), y.to(target, torch.long)
                logits, grad = _clean_pass(model, x, y, with_grad=sanity)
                clean_correct.append((logits.argmax(dim=1) == y).cpu())
                if sanity:
                    zero_gradients += zero_gradient_count(grad, x.shape[0])
                    probabilities = probabilities and looks_like_probabilities(logits)
                for tally in tallies:
                    tally.add(model, x, y, target)
                    bar.update(1)
    finally:
        _restore(modes)
    clean = torch.cat(clean_correct)
    results = [tally.result(clean) for tally in tallies]
    clean_accuracy = fraction(clean)
    messages = []
    if sanity:
        messages = sanity_warnings(clean.numel(), clean_accuracy, results, zero_gradients, probabilities)
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
        self.correct: list[torch.Tensor] = []
        self.norm_sums = {"l2": 0.0, "linf": 0.0, "nuc": 0.0}
        self.seconds = 0.0

    def add(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        """Attack the batch ``(x, y)`` and record the outcome."""
        tic = time.perf_counter()
        x_adv = self.run.attack(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - tic
        self._check(x_adv, x)
        with torch.no_grad():
            x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
            self.correct.append((model(x_adv).argmax(dim=1) == y).cpu())
            delta = x_adv - x
            for norm in self.norm_sums:
                self.norm_sums[norm] += float(per_sample_norm(delta, norm).sum())

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
        )

    def _check(self, x_adv: object, x: torch.Tensor) -> None:
        what = f"attacks[{self.run.name!r}]" + ("" if self.run.eps is None else f" at eps={self.run.eps:g}")
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
            got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
            raise ValueError(f"{what} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        if not bool(torch.isfinite(x_adv).all()):
            raise ValueError(f"{what} must return finite images, got NaN or inf values")


def _clean_pass(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean logits (checked) and, with ``with_grad``, ``∇ₓ`` of the summed cross-entropy (``None`` if the
    output does not depend on ``x``)."""
    x_in = x.detach().clone().requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        logits = model(x_in)
        _check_logits(logits, y)
        grad = None
        if with_grad and logits.requires_grad:
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
    return logits.detach(), grad


def _check_logits(logits: object, y: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (N, num_classes) = ({y.shape[0]}, K), got {got}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(f"data must hold labels in [0, {logits.shape[1] - 1}] (the model's classes), "
                         f"got labels in [{lo}, {hi}]")


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(params, None)
    return torch.device("cpu") if first is None else first.device


def _enter_eval(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put ``model`` in eval mode; return every submodule's previous mode."""
    if not isinstance(model, nn.Module):
        return []
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    return modes


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training
