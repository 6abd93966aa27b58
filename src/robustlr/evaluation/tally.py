"""One attack run of :func:`robustlr.evaluate.evaluate` accumulated over batches, on the device.

A :class:`RunTally` attacks a batch (all of it, or in a cascade only the points still robust before it), records
per sample whether the model is still correct, sums the perturbation norms and keeps the statistics of the value
checks of its last result (:func:`~robustlr.evaluation.guards.adversarial_stats`) for the caller's next fused
read; nothing is read to the host here, except to name the sample of a failed check.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..attacks.projections import channel_svd, per_sample_norm
from .families import attack_family
from .guards import adversarial_input, adversarial_stats, check_logits_shape, declared_bound, raise_adversarial
from .result import AttackResult, fraction
from .specs import AttackRun

__all__ = ["RunTally"]

_WORST_SAMPLE = 4
"""Position in :func:`~robustlr.evaluation.guards.adversarial_stats` of the sample with the largest perturbation."""


class RunTally:
    """Accumulates one run over batches: per-sample correctness, the sums of ``‖δ‖₂``, ``‖δ‖∞`` and (``nuclear``)
    ``Σ_c ‖δ_c‖_*`` over the attacked points, their count, the statistics of the checks of the last result (read
    with the next batch's checks), and the time in the attack on the host.

    ``stage`` is the run's place in its cascade group (0 first, ``None``: not cascaded, every point is attacked);
    ``previous`` the tally of the stage before it (``None`` for the first stage: it attacks the clean-correct
    points)."""

    def __init__(self, run: AttackRun, nuclear: bool, device: torch.device, stage: int | None = None,
                 previous: RunTally | None = None) -> None:
        self.run = run
        self.what = f"attacks[{run.name!r}]" + ("" if run.eps is None else f" at eps={run.eps:g}")
        self.nuclear = nuclear
        self.stage = stage
        self.previous = previous
        self.correct: list[torch.Tensor] = []
        self.norm_sums = torch.zeros(3 if nuclear else 2, dtype=torch.float64, device=device)
        self.pending: tuple[torch.Tensor, int, int, float | None] | None = None  # stats, batch, n, bound
        self.attacked = 0
        self.seconds = 0.0

    def lag(self) -> int:
        """How many iterations after its clean pass a batch reaches this run (its stage; 0 if not cascaded)."""
        return self.stage or 0

    def selection(self, index: int, clean_correct: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """For a cascaded run, the points of batch ``index`` still robust before it: their count (a 0-d tensor,
        for the caller's fused read) and an order of the batch's positions that lists them first (ascending),
        both on the device; the caller attacks ``order[:count]``."""
        alive = clean_correct[index] if self.previous is None else self.previous.correct[index]
        order = torch.argsort(alive.to(torch.uint8), descending=True, stable=True)
        return alive.sum(), order

    def add(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int, device: torch.device,
            chosen: torch.Tensor | None = None) -> None:
        """Attack batch ``(x, y)`` (the ``index``-th) — only its positions ``chosen`` (a device index tensor) if
        given — check the shape and dtype of what the attack returned, and record the outcome (points not chosen
        count as not correct) and the statistics of its value checks."""
        if chosen is not None and chosen.numel() == 0:
            self.correct.append(torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
            return
        x_in, y_in = (x, y) if chosen is None else (x.index_select(0, chosen), y.index_select(0, chosen))
        tic = time.perf_counter()
        x_adv = self.run.attack(x_in, y_in)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - tic
        self.attacked += x_in.shape[0]
        x_adv = adversarial_input(x_adv, x_in, self.what).to(dtype=x.dtype)
        with torch.no_grad():
            logits = check_logits_shape(model(x_adv), x_in.shape[0])
            correct = logits.argmax(dim=1) == y_in
            if chosen is not None:
                correct = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device).index_copy_(0, chosen, correct)
            self.correct.append(correct)
            stats = adversarial_stats(x_adv, x_in, self.run.norm, self.run.eps, logits)
            if chosen is not None:  # the worst sample by its position in the batch, not in the selection
                stats[_WORST_SAMPLE] = chosen.index_select(0, stats[_WORST_SAMPLE].long().view(1)).double().squeeze()
            self.pending = (stats, index, x_in.shape[0], declared_bound(self.run.eps, self.run.norm, x_in, x_adv))
            delta = x_adv - x_in
            norms = [per_sample_norm(delta, "l2"), per_sample_norm(delta, "linf")]
            if self.nuclear:
                norms.append(channel_svd(delta, dtype=torch.float32).sum(dim=(1, 2)))
            self.norm_sums += torch.stack([values.sum().double() for values in norms])

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
        count = correct.numel() if self.stage is None else self.attacked
        l2, linf, *nuc = [value / count if count else math.nan for value in norm_sums]
        return AttackResult(
            attack=self.run.name,
            eps=self.run.eps,
            kind=self.run.kind,
            attack_repr=repr(self.run.attack),
            robust_accuracy=fraction(robust),
            mean_l2=l2,
            mean_linf=linf,
            mean_nuclear=nuc[0] if nuc else math.nan,
            seconds=self.seconds,
            correct=correct,
            robust=robust,
            norm=self.run.norm,
            attacked=self.attacked,
            stage=None if self.stage is None else self.stage + 1,
            family=attack_family(self.run.attack),
        )
