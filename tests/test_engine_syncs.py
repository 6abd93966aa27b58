"""Host round trips of the training step and of evaluation (issue 11 §2), counted on the CPU with
:class:`robustlr.profiling.HostSyncs` (what a GPU would wait for).

Budgets asserted here (the same for 10 and for 100 steps / for 1 and for 4 batches):

* training step (:class:`~robustlr.train.step.Stepper`): 0 per step, 1 per :meth:`Stepper.settle` (the trainer
  settles every ``LOG_EVERY`` batches and at the end of an epoch);
* adversarial training step: the attack's own round trips per call (≤ 3, its fused input check) and nothing else;
* ``evaluate``: 1 per batch (one fused read of every check of the batch) plus a constant per call, besides what
  the attacks themselves read.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlr.attacks import PGD, LoRaPGD
from robustlr.attacks.base import AUTO_LOSS_SCALE
from robustlr.evaluate import at_eps, evaluate
from robustlr.profiling import HostSyncs
from robustlr.train.adversarial import AdversarialTraining
from robustlr.train.config import TrainConfig
from robustlr.train.distributed import Distributed
from robustlr.train.step import BatchContext, NonFiniteLossError, Stepper, Tally, evaluate_batches

SHAPE = (1, 6, 6)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 4))


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _run_steps(stepper: Stepper, steps: int, settle_every: int | None = None) -> tuple[Tally, HostSyncs]:
    x, y = _batch()
    tally = Tally()
    # data_sizes=False: an adversarial step selects its rows from the batch's positions and ids, host tensors
    # (BatchContext), with a nonzero that is host work on a GPU machine too (the attacks alone are counted with
    # data sizes: tests/test_attack_syncs.py)
    with HostSyncs(data_sizes=False) as syncs:
        for index in range(steps):
            stepper(x, y, BatchContext.whole(x.shape[0], 1, index))
            if settle_every is not None and (index + 1) % settle_every == 0:
                stepper.settle(tally)
        stepper.settle(tally)
    return tally, syncs


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("steps", [10, 100])
def test_a_training_step_makes_no_host_round_trip_and_a_settle_one(steps):
    model = _model()
    tally, syncs = _run_steps(Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1)), steps)
    assert syncs.total == 1, syncs  # budget: 0 per step + 1 per settle
    assert tally.count == 8 * steps and 0 <= tally.correct <= tally.count and math.isfinite(tally.loss)


def test_the_tally_does_not_depend_on_when_the_steps_are_settled():
    tallies = []
    for settle_every in (1, 7, None):
        model = _model()
        tally, _ = _run_steps(Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1)), 20, settle_every)
        tallies.append((tally.loss_sum, tally.correct, tally.count))
    assert tallies[0] == tallies[1] == tallies[2]  # exactly: sums taken step by step, in order, on the host


class _NanFrom(nn.Module):
    """Finite logits for the first ``good`` calls in train mode, NaN afterwards."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.linear, self.calls, self.good = nn.Linear(36, 4), 0, good

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x.flatten(1))
        return out if self.calls <= self.good else out * math.nan


def test_a_non_finite_loss_is_found_at_the_settle_naming_its_batch_and_leaves_the_tally_alone():
    model = _NanFrom(good=3)
    stepper = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _batch()
    tally = Tally()
    for index in range(6):
        stepper(x, y, BatchContext.whole(8, 2, index))  # no error here: nothing is read per step
    with pytest.raises(NonFiniteLossError, match=r"the training loss is not finite \(nan\)") as caught:
        stepper.settle(tally)
    assert caught.value.batch == 4  # the first non-finite batch of the epoch, from 1
    assert (tally.loss_sum, tally.correct, tally.count) == (0.0, 0, 0)


def test_validation_batches_are_read_once():
    model = _model()
    batches = [_batch(8, seed) for seed in range(5)]
    with HostSyncs() as syncs:
        tally = evaluate_batches(model, batches, torch.device("cpu"))
    assert syncs.total == 1, syncs  # budget: one read for all batches
    with torch.no_grad():
        expected = sum(float(nn.functional.cross_entropy(model(x), y, reduction="sum")) for x, y in batches)
    assert tally.count == 40 and tally.loss_sum == pytest.approx(expected, rel=1e-6)


def _adversarial(warm: bool, amp: str | None = None) -> AdversarialTraining:
    config = TrainConfig(method="dense", adv="pgd", adv_steps=3, adv_warm_start=warm, amp=amp)
    return AdversarialTraining(config, 8, SHAPE, torch.device("cpu"), Distributed.from_env(torch.device("cpu")))


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm-start"])
def test_an_adversarial_step_adds_only_the_attacks_own_round_trips(warm):
    x, y = _batch()
    probe = _model()
    with HostSyncs() as one_attack:
        PGD(probe, 0.3, norm="linf", steps=3, seed=1)(x, y)
    per_attack = one_attack.total
    assert per_attack <= 3, one_attack  # the attack's budget per call
    counts = []
    for steps in (10, 20):
        model = _model()
        stepper = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1), _adversarial(warm))
        _, syncs = _run_steps(stepper, steps)
        counts.append(syncs.total - steps * per_attack)
    assert counts == [1, 1], counts  # budget: the attack's own per step + 1 per settle


def test_the_fp16_training_attack_is_loss_scaled():
    attack = _adversarial(False, amp="fp16").attack(_model(), seed=0)
    assert attack.loss_scale == AUTO_LOSS_SCALE
    assert _adversarial(False).attack(_model(), seed=0).loss_scale is None  # float32 / bf16: none needed


# ----------------------------------------------------------------------------------------------- evaluation


def _shifted(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An "attack" that reads nothing from the device: only the evaluation's own round trips are counted."""
    return (x + 0.01).clamp(0, 1)


def _evaluate_syncs(attacks, grid, batches: int, sanity: bool) -> HostSyncs:
    x, y = _batch(8 * batches)
    model = _model()
    with HostSyncs() as syncs:
        evaluate(model, (x, y), attacks(model), grid, batch_size=8, progress=False, sanity=sanity)
    return syncs


@pytest.mark.parametrize("sanity", [False, True])
def test_evaluation_reads_the_host_once_per_batch(sanity):
    one = _evaluate_syncs(lambda m: {"shift": _shifted}, None, 1, sanity)
    four = _evaluate_syncs(lambda m: {"shift": _shifted}, None, 4, sanity)
    assert four.total - one.total == 3, (one, four)  # budget: 1 per batch
    assert one.total <= 9, one  # budget: 1 per batch + a constant per call (weights, masks, sums)


def test_evaluation_with_a_real_attack_adds_only_the_attacks_round_trips():
    def attacks(model):
        return {"pgd": at_eps(lambda e: PGD(model, e, "linf", steps=2, seed=0))}

    one, four = (_evaluate_syncs(attacks, [0.1], batches, False) for batches in (1, 4))
    shift_one, shift_four = (_evaluate_syncs(lambda m: {"shift": _shifted}, None, b, False) for b in (1, 4))
    per_batch = ((four.total - shift_four.total) - (one.total - shift_one.total)) / 3
    assert per_batch <= 3, (one, four)  # the attack's own round trips per call, nothing more per batch


def test_the_nuclear_norm_is_computed_for_low_rank_attacks_or_when_asked():
    model = _model()
    x, y = _batch(8)
    attacks = {"pgd": at_eps(lambda e: PGD(model, e, "l2", steps=2, seed=0)),
               "lora": at_eps(lambda e: LoRaPGD(model, e, rank=2, norm="l2", steps=2, seed=0))}
    auto = {r.attack: r for r in evaluate(model, (x, y), attacks, [0.5], progress=False, sanity=False).attacks}
    assert math.isnan(auto["pgd"].mean_nuclear) and auto["pgd"].to_dict()["mean_nuclear"] is None
    assert auto["lora"].mean_nuclear >= auto["lora"].mean_l2 > 0  # ‖δ_c‖_* ≥ ‖δ_c‖_F summed over channels
    asked = evaluate(model, (x, y), attacks, [0.5], progress=False, sanity=False, nuclear=True).attacks
    pgd = next(r for r in asked if r.attack == "pgd")
    exact = PGD(model, 0.5, "l2", steps=2, seed=0)(x, y) - x  # float64 SVD for the reference
    assert pgd.mean_nuclear == pytest.approx(float(torch.linalg.svdvals(exact.double()).sum()) / 8, rel=1e-5)
    none = evaluate(model, (x, y), attacks, [0.5], progress=False, sanity=False, nuclear=False).attacks
    assert all(math.isnan(r.mean_nuclear) for r in none)
    with pytest.raises(ValueError, match="nuclear must be True, False or None .*; got 'yes'"):
        evaluate(model, (x, y), attacks, [0.5], progress=False, nuclear="yes")


class _OverBudgetInBatch:
    """Declares L2 ε = 0.1 but returns a perturbation of norm 0.2 for the batch number ``bad`` (from 1)."""

    norm, eps = "l2", 0.1

    def __init__(self, bad: int) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        scale = 0.2 if self.calls == self.bad else 0.05
        return x + scale / math.sqrt(x[0].numel())  # x = 0.5 everywhere: stays in [0, 1]


def test_a_bad_attack_result_is_named_with_its_batch_at_the_next_read():
    x = torch.full((24, *SHAPE), 0.5)
    y = torch.zeros(24, dtype=torch.long)
    attack = _OverBudgetInBatch(bad=2)
    with pytest.raises(ValueError, match=r"attacks\['over'\] at eps=0.1 must keep every perturbation within its "
                                         r"budget.* got 0\.2 for sample 0 of batch 2"):
        evaluate(_model(), (x, y), {"over": attack}, batch_size=8, progress=False, sanity=False)
    assert attack.calls == 2  # found with batch 3's checks, before batch 3 is attacked
