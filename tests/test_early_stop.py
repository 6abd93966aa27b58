"""The early stop of APGD, APGD-T and FAB (robustlr.attacks.early_stop): on real Fashion-MNIST the same images are
fooled with and without it, with less work; the budget and the box hold; a call's host reads stay a small
constant; random draws of a subset are those of its samples; bad input is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlr.attacks import APGD, APGDT, FAB
from robustlr.attacks.early_stop import EVERY, Shrinking, compacts, pending
from robustlr.attacks.registry import build_attack
from robustlr.evaluation.suites import suite_attacks
from robustlr.profiling import HostSyncs

from conftest import small_cnn


class Counting(nn.Module):
    """A model that counts the images it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)


def test_compaction_steps_are_the_powers_of_two_then_every_tenth():
    steps = [s for s in range(1, 101) if compacts(s, EVERY)]
    assert steps == [1, 2, 4, 8, *range(10, 101, 10)]
    assert [q for q in range(0, 300) if compacts(q, 100)] == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200]


def test_shrinking_writes_every_retired_row_once_in_place():
    values = torch.arange(6.0)[:, None].repeat(1, 2)
    shrinking = Shrinking()
    assert shrinking.shrink(torch.zeros(6, dtype=torch.bool), values) is None and shrinking.rows is None
    keep = shrinking.shrink(torch.tensor([False, True, False, True, False, False]), values)
    assert keep.tolist() == [0, 2, 4, 5] and shrinking.rows.tolist() == [0, 2, 4, 5]
    keep = shrinking.shrink(torch.tensor([True, False, False, False]), values[keep] + 10)
    assert keep.tolist() == [1, 2, 3] and shrinking.rows.tolist() == [2, 4, 5]
    (out,) = shrinking.complete(values[shrinking.rows] + 20)
    assert out[:, 0].tolist() == [10, 1, 22, 3, 24, 25]
    (same,) = Shrinking().complete(values)
    assert same is values
    assert pending(torch.ones(3, dtype=torch.bool)) is None
    assert pending(torch.tensor([True, False, True, False])).tolist() == [1, 3]


ATTACKS = {
    "apgd-ce-linf": lambda m, stop: APGD(m, 0.05, "linf", steps=50, seed=0, early_stop=stop),
    "apgd-ce-l2": lambda m, stop: APGD(m, 1.0, "l2", steps=50, restarts=2, seed=0, early_stop=stop),
    "apgd-t-l2": lambda m, stop: APGDT(m, 1.0, "l2", steps=30, n_target_classes=3, restarts=2, seed=0,
                                       early_stop=stop),
    "fab-t-linf": lambda m, stop: FAB(m, 0.05, "linf", steps=30, n_target_classes=3, seed=0, early_stop=stop),
    "fab-t-l2": lambda m, stop: FAB(m, 1.0, "l2", steps=30, n_target_classes=3, restarts=2, seed=0,
                                    early_stop=stop),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_same_images_are_fooled_with_less_work(name, fmnist, fmnist_model):
    """200 real test images: the fooled set is the same (up to one image: a batched convolution may round a
    near-tie differently at another batch size), the budget and the box hold, and the early stop evaluates at
    most 0.8 of the images the full run does (it stops on every image it fools, here most of them)."""
    _, test = fmnist
    x, y = test.images[:200], test.labels[:200]
    counted = Counting(fmnist_model)
    results, work = {}, {}
    for stop in (False, True):
        counted.images = 0
        results[stop] = ATTACKS[name](counted, stop)(x, y)
        work[stop] = counted.images
    norm, eps = ("linf", 0.05) if name.endswith("linf") else ("l2", 1.0)
    with torch.no_grad():
        fooled = {stop: fmnist_model(adv).argmax(dim=1) != y for stop, adv in results.items()}
    assert 20 <= int(fooled[False].sum()) <= 190, int(fooled[False].sum())  # a test that can tell them apart
    assert int((fooled[True] != fooled[False]).sum()) <= 1
    delta = (results[True] - x).flatten(1)
    norms = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (norms <= eps).all() and results[True].min() >= 0 and results[True].max() <= 1
    unfooled = ~fooled[True] & ~fooled[False]
    assert torch.allclose(results[True][unfooled], results[False][unfooled], atol=1e-5)
    assert work[True] <= 0.8 * work[False], work


def test_host_reads_are_one_per_compaction_and_do_not_grow_with_the_fooled():
    """APGD: the input check and one read per compaction step (13 for 100 steps), at most."""
    model = small_cnn(size=8, seed=0)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    with HostSyncs() as syncs:
        APGD(model, 0.3, "l2", steps=100, seed=0, early_stop=True)(x, y)
    assert 1 <= syncs.total <= 1 + sum(compacts(s, EVERY) for s in range(1, 100)), syncs.events


def test_a_subset_draws_the_noise_of_its_samples():
    model = small_cnn(size=8, seed=0)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    atk = APGD(model, 0.3, "l2", seed=3)
    rows = torch.tensor([4, 1])

    def draws(xw, yw, targeted):
        full = atk._noise("normal", (1, 8, 8), 2, xw)
        with atk._subset(rows):
            part = atk._noise("normal", (1, 8, 8), 2, xw[rows])
            with atk._subset(torch.tensor([1])):
                inner = atk._noise("normal", (1, 8, 8), 2, xw[rows][1:])
        return full, part, inner

    full, part, inner = atk._guarded(x, torch.zeros(6, dtype=torch.long), False, draws)
    assert torch.equal(part, full[rows]) and torch.equal(inner, full[1:2])


def test_the_autoattack_suite_stops_early_and_bad_input_is_refused():
    model = small_cnn(size=8, seed=0)
    specs = suite_attacks("autoattack", model, "l2")
    built = [spec.factory(0.5) for spec in specs.values()]
    assert [atk.early_stop for atk in built] == [True, True, True, True]
    assert not APGD(model, 0.1).early_stop and not FAB(model, 0.1).early_stop
    assert "early_stop=True" in repr(built[0])
    with pytest.raises(ValueError, match="attack 'pgd-l2' has no early stop, got early_stop=True"):
        build_attack("pgd-l2", model, 0.5, early_stop=True)
    for make in (lambda: APGD(model, 0.1, early_stop=1), lambda: FAB(model, 0.1, early_stop="yes"),
                 lambda: build_attack("apgd-ce-l2", model, 0.5, early_stop=None)):
        with pytest.raises(ValueError, match="early_stop must be True or False, got"):
            make()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_keep_their_dtype_budget_and_fooled_set(dtype):
    """A half-precision model and batch: the early stop returns the input dtype, within ε in it, and fools the
    images the full run fools (up to one near-tie)."""
    model = small_cnn(size=8, seed=0).to(dtype)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    for make in (lambda stop: APGD(model, 0.5, "l2", steps=20, seed=0, early_stop=stop),
                 lambda stop: APGDT(model, 0.05, "linf", steps=10, n_target_classes=2, seed=0, early_stop=stop),
                 lambda stop: FAB(model, 0.5, "l2", steps=10, n_target_classes=2, seed=0, early_stop=stop)):
        full, early = make(False)(x, y), make(True)(x, y)
        assert early.dtype == dtype and torch.isfinite(early).all()
        with torch.no_grad():
            fooled = [model(adv).argmax(dim=1) != y for adv in (full, early)]
        assert int(fooled[0].sum()) >= 5 and int((fooled[0] != fooled[1]).sum()) <= 1
        delta = (early.double() - x.double()).flatten(1)
        eps = make(True).eps
        norms = delta.abs().amax(dim=1) if make(True).norm == "linf" else delta.norm(dim=1)
        assert (norms <= eps).all()
