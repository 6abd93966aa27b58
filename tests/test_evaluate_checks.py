"""evaluate() never measures a broken model, a broken attack result or a mix of threat models (issue 10).

Every test here fails on the evaluation of before the issue: it either passed the bad input through (a
number was reported) or raised an unclear error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from robustlr.attacks import FGSM, PGD
from robustlr.evaluate import RobustnessWarning, at_eps, evaluate
from robustlr.evaluation.guards import budget_bound, check_adversarial
from robustlr.evaluation.spectrum import perturbation_spectrum


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(10, 1, 4, 4, generator=gen), torch.randint(0, 3, (10,), generator=gen)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()


def run(model, data, attacks, eps_grid=None, **kwargs):
    return evaluate(model, data, attacks, eps_grid, progress=False, sanity=False, **kwargs)


class Spy:
    """A ready attack that records whether it was ever called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


# ---------------------------------------------------------------- item 1: devices


def test_device_this_machine_lacks_is_a_value_error(model, data):
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=r"device must be one this machine has \(cpu.*; got 'cuda"):
        run(model, data, {"id": Spy()}, device=missing)
    with pytest.raises(ValueError, match="device must be one this machine has"):
        run(model, data, {"id": Spy()}, device="meta")


# ---------------------------------------------------------------- item 2: broken models


def test_nan_weight_is_named_before_any_attack(model, data):
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    spy = Spy()
    with pytest.raises(ValueError, match=r"non-finite values \(NaN/inf\) in parameter '3.weight': 1 of 24 entries"):
        run(model, data, {"spy": spy})
    assert spy.calls == 0


def test_inf_buffer_is_named(model, data):
    model[2].running_var[1] = float("inf")
    with pytest.raises(ValueError, match=r"in buffer '2.running_var'"):
        run(model, data, {"id": Spy()})


class NanLogits(nn.Module):
    """Finite weights, but NaN logits for the samples whose first pixel is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x.flatten(1))
        return torch.where(x.flatten(1)[:, :1] > 0.5, torch.full_like(logits, math.nan), logits)


def test_nan_clean_logits_are_an_error_before_any_attack(data):
    spy = Spy()
    bad = int((data[0].flatten(1)[:, 0] > 0.5).sum())
    assert 0 < bad < 10
    with pytest.raises(ValueError, match=rf"non-finite logits \(NaN/inf\) for {bad} of 10 clean images in the first "
                                         "batch: check its weights"):
        run(NanLogits(), data, {"spy": spy}, batch_size=10)
    assert spy.calls == 0


def test_nan_logits_on_adversarial_images_are_an_error(data):
    x = data[0] * 0.5  # every first pixel <= 0.5: clean logits finite
    with pytest.raises(ValueError, match=r"non-finite logits .* images made by attacks\['up'\]"):
        run(NanLogits(), (x, data[1]), {"up": lambda x, y: torch.ones_like(x)})


@pytest.mark.parametrize(
    "images, match",
    [
        (lambda x: x * 255, r"data must hold images with values in \[0, 1\] .* got values in \[\d"),
        (lambda x: (x - 0.5) / 0.25, r"normalisation belongs inside the model"),
        (lambda x: torch.where(x > 0.9, math.nan, x), "data must hold finite images, got NaN or inf"),
    ],
)
def test_data_outside_the_unit_range_is_refused_before_any_attack(model, data, images, match):
    """Else an identity attack on such data would be blamed for returning values outside [0, 1]."""
    spy = Spy()
    with pytest.raises(ValueError, match=match):
        run(model, (images(data[0]), data[1]), {"spy": spy})
    assert spy.calls == 0


# ---------------------------------------------------------------- item 3: broken attack results


@pytest.mark.parametrize(
    "attack, match",
    [
        (lambda x, y: x + 5, r"attacks\['bad'\] must return images with values in \[0, 1\], got values in \[5"),
        (lambda x, y: (x * 255).to(torch.uint8), r"attacks\['bad'\] must return floating-point images .* torch.uint8"),
        (lambda x, y: x > 0.5, r"must return floating-point images .* torch.bool"),
        (lambda x, y: torch.zeros_like(x) - 1e-3, r"got values in \[-0.001, -0.001\]"),
    ],
)
def test_attack_results_outside_the_image_domain_are_errors(model, data, attack, match):
    with pytest.raises(ValueError, match=match):
        run(model, data, {"bad": attack})


class Cheater:
    """Declares an L2 budget but returns a larger perturbation."""

    norm = "l2"

    def __init__(self, eps: float, scale: float) -> None:
        self.eps, self.scale = eps, scale

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = torch.randn_like(x)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * self.eps * self.scale
        return x + d  # no clipping: stays in [0, 1] only because x is mid-grey below


def test_perturbation_over_the_declared_budget_is_an_error(model):
    x, y = torch.full((6, 1, 4, 4), 0.5), torch.zeros(6, dtype=torch.long)
    run(model, (x, y), {"ok": Cheater(0.2, 1.0)})  # exactly at the budget: accepted
    with pytest.raises(ValueError, match=r"attacks\['over'\] at eps=0.2 must keep every perturbation within its "
                                         r"budget, ‖x_adv − x‖_l2 <= eps=0.2 .* got 0.22"):
        run(model, (x, y), {"over": Cheater(0.2, 1.1)})


def test_factory_that_ignores_eps_is_refused_before_any_work(model, data):
    fixed = FGSM(model, 0.1, "l2")
    with pytest.raises(ValueError, match=r"attacks\['lazy'\] factory built an attack with eps=0.1 at eps=2: the "
                                         "factory must use its argument"):
        run(model, data, {"lazy": at_eps(lambda e: fixed)}, [0.1, 2.0])


def test_budget_bound_follows_the_dtype():
    x32, x16 = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.float16)
    assert budget_bound(0.5, "linf", x32, x32) == pytest.approx(0.5 * (1 + 1e-4), rel=1e-6)
    half = budget_bound(0.5, "linf", x32, x16)
    assert 0.5 + 2e-3 < half < 0.5 + 1e-2  # a few fp16 ulps of round-off allowed, not a real violation
    assert budget_bound(0.5, "l2", x32, x32) > budget_bound(0.5, "linf", x32, x32)  # √d entries of round-off


def test_half_precision_pgd_passes_the_budget_check():
    """PGD on fp16 inputs rounds x + δ to fp16: within the bound, never a false alarm."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    x = torch.rand(4, 3, 4, 4)
    adv = PGD(net, 8 / 255, "linf", steps=2, seed=0)(x, torch.zeros(4, dtype=torch.long))
    half = adv.half()
    checked = check_adversarial(half, x, "pgd", 8 / 255, "linf")
    assert checked.dtype == torch.float16
    with pytest.raises(ValueError, match="within its budget"):
        check_adversarial((adv + 0.01).clamp(0, 1).half(), x, "pgd", 8 / 255, "linf")


# ---------------------------------------------------------------- item 3: threat models per norm


@pytest.fixture
def mixed(model, data):
    attacks = {"fgsm-l2": at_eps(lambda e: FGSM(model, e, "l2")), "fgsm-linf": at_eps(lambda e: FGSM(model, e, "linf"))}
    with pytest.warns(RobustnessWarning, match=r"L2 and L∞ budgets were not merged.*ε=0.1, 0.5: l2 \(fgsm-l2\) vs "
                                               r"linf \(fgsm-linf\)"):
        return run(model, data, attacks, [0.1, 0.5])


def test_l2_and_linf_worst_cases_are_kept_apart(mixed):
    assert [(w.eps, w.norm, w.attacks) for w in mixed.worst_case] == [
        (0.1, "l2", ["fgsm-l2"]), (0.1, "linf", ["fgsm-linf"]), (0.5, "l2", ["fgsm-l2"]), (0.5, "linf", ["fgsm-linf"])]
    for r in mixed.attacks:
        assert mixed.worst_at(r.eps, norm=r.norm).robust_accuracy == r.robust_accuracy
        assert r.to_dict()["norm"] == r.norm
    assert [row["worst_case_accuracy"] for row in mixed.rows()] == [r.robust_accuracy for r in mixed.attacks]
    assert mixed.to_dict()["worst_case"][0]["norm"] == "l2"
    assert len(mixed.warnings) == 1


def test_worst_at_asks_for_a_norm_when_several_ran(mixed):
    with pytest.raises(ValueError, match=r"worst_at\(eps=0.5\) needs a norm: attacks of norms \['l2', 'linf'\]"):
        mixed.worst_at(0.5)
    with pytest.raises(ValueError, match="norm must be None or one of"):
        mixed.worst_at(0.5, norm="L2")
    assert mixed.worst_at(0.3, norm="l2") is None


def test_single_norm_worst_at_needs_no_norm(model, data):
    result = run(model, data, {"a": at_eps(lambda e: FGSM(model, e, "l2")), "b": FGSM(model, 0.5, "l2")}, [0.5])
    assert result.worst_at(0.5).attacks == ["a", "b"] and result.worst_at(0.5).norm == "l2"
    assert result.warnings == []


# ---------------------------------------------------------------- item 4: modes


def test_mixed_modes_restored_even_when_an_attack_fails(model, data):
    model.train()
    model[2].eval()

    def broken(x, y):
        raise RuntimeError("attack crashed")

    with pytest.raises(RuntimeError, match="attack crashed"):
        run(model, data, {"broken": broken})
    assert model.training and model[1].training and not model[2].training


# ---------------------------------------------------------------- item 5: numbers by kind


def test_numpy_numbers_and_float32_grids(model, data):
    attacks = {"f": at_eps(lambda e: FGSM(model, e, "l2"))}
    result = run(model, data, attacks, np.array([0.1, 0.5], dtype=np.float32), batch_size=np.int64(4), n=np.int64(7))
    assert result.n == 7 and [r.eps for r in result.attacks] == [0.1, 0.5]  # 0.1, not 0.10000000149
    assert [r.eps for r in run(model, data, attacks, torch.tensor([0.1])).attacks] == [0.1]
    assert [r.eps for r in run(model, data, attacks, [np.float32(0.1)]).attacks] == [0.1]


@pytest.mark.parametrize("grid", [[True], [0.5, False], "0.5", np.zeros((2, 2))])
def test_bool_and_malformed_eps_grids_are_refused(model, data, grid):
    with pytest.raises(ValueError, match="eps_grid must"):
        run(model, data, {"f": at_eps(lambda e: FGSM(model, e, "l2"))}, grid)


# ---------------------------------------------------------------- the spectrum study uses the same checks


def test_spectrum_study_checks_inputs_and_attack_results(model, data):
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = perturbation_spectrum(model, x, y, {"fgsm": FGSM(model, 0.5, "l2")}, batch_size=np.int64(4),
                                      progress=False)
    assert stats[0].n == 10
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        perturbation_spectrum(model, x, y, {"fgsm": FGSM(model, 0.5, "l2")}, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"attacks\['up'\] must return images with values in \[0, 1\]"):
        perturbation_spectrum(model, x, y, {"up": lambda x, y: x + 5}, progress=False)
    with pytest.raises(ValueError, match=r"attacks\['over'\] must keep every perturbation within its budget"):
        perturbation_spectrum(model, torch.full_like(x, 0.5), y, {"over": Cheater(0.2, 1.5)}, progress=False)
