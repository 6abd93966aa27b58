"""Attack arguments: budgets that the arithmetic cannot represent are refused early and by name, large
representable budgets work, and numbers of any real / integer type (numpy scalars) are accepted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robustlr.attacks import ATTACK_NAMES, FGSM, PGD, LoRaPGD, RankProjectedPGD, build_attack
from robustlr.attacks.projections import check_rank_spec, resolve_rank

from conftest import small_cnn

TINY = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
CONSTRUCTORS = {
    "FGSM": lambda eps, **kw: FGSM(TINY, eps, **kw),
    "PGD": lambda eps, **kw: PGD(TINY, eps, **kw),
    "LoRaPGD": lambda eps, **kw: LoRaPGD(TINY, eps, rank=2, **kw),
    "RankProjectedPGD": lambda eps, **kw: RankProjectedPGD(TINY, eps, rank=2, **kw),
}


def _batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(3, 1, 8, 8, generator=gen).to(dtype), torch.randint(0, 10, (3,), generator=gen)


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("make", list(CONSTRUCTORS.values()), ids=list(CONSTRUCTORS))
@pytest.mark.parametrize("norm,eps", [("linf", 1e39), ("l2", 1e39), ("l2", 1e20)])
def test_budget_beyond_float32_refused_at_construction(make, norm, eps):
    with pytest.raises(ValueError, match=r"eps must be at most .*float32.*got 1e\+"):
        make(eps, norm=norm)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_build_attack_refuses_budget_beyond_float32(name):
    rank = 2 if "lora" in name or "rank" in name else None
    with pytest.raises(ValueError, match="eps must be at most"):
        build_attack(name, TINY, 1e39, rank=rank)


def test_alpha_beyond_float32_refused_given_or_by_default():
    with pytest.raises(ValueError, match=r"alpha must be at most .*got 1e\+39"):
        PGD(TINY, 0.1, alpha=1e39)
    with pytest.raises(ValueError, match=r"alpha must be at most .*2\.5·eps/steps"):
        PGD(TINY, 3e38, "linf", steps=1)  # 2.5 · 3e38 overflows float32
    with pytest.raises(ValueError, match="alpha must be at most"):
        PGD(TINY, 0.5, "l2", alpha=np.float64(1e20))


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("make", [lambda m: PGD(m, 1e5, "linf", steps=1), lambda m: PGD(m, 0.1, alpha=7e4, steps=1),
                                  lambda m: LoRaPGD(m, 1e5, 2, "l2", steps=1), lambda m: FGSM(m, 1e5)])
def test_budget_not_finite_in_the_images_dtype_refused_before_any_work(make):
    model = _Counting().half()
    model.train()
    x, y = _batch(torch.float16)
    with pytest.raises(ValueError, match=r"(eps|alpha) must be at most 65504 .*float16.*dtype of x"):
        make(model)(x, y)
    assert model.calls == 0 and model.training


@pytest.mark.parametrize("make", [
    lambda m: PGD(m, 3e38, "linf", steps=10, seed=0), lambda m: FGSM(m, 3.4e38),
    lambda m: PGD(m, 1e18, "l2", steps=3, seed=0), lambda m: FGSM(m, 9e18, "l2"),
    lambda m: LoRaPGD(m, 1e30, 2, "linf", steps=3, seed=0), lambda m: LoRaPGD(m, 1e10, 2, "l2", steps=3, seed=0),
    lambda m: LoRaPGD(m, 1e18, 2, "l2", steps=3, init="svd"), lambda m: RankProjectedPGD(m, 1e18, 2, steps=3),
])
def test_large_representable_budget_attacks_without_nan(make):
    """Before: LoRa-PGD gave NaN at ε ≥ 1e30 and no perturbation at all at ε = 1e10 (its backward
    overflowed); PGD-L2/FGM gave none at ε ≥ 1e20 (every norm was inf)."""
    model = small_cnn(size=8)
    x, y = _batch()
    x_adv = make(model)(x, y)
    assert not bool(x_adv.isnan().any())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().amax()) > 0.5  # the unbounded attack moves pixels far


# --------------------------------------------------------------------------- numbers of any type
@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@pytest.mark.parametrize("eps", [np.float32(0.25), np.float64(0.25), np.int64(1)])
def test_numpy_budgets_accepted_and_stored_as_python_floats(name, eps):
    atk = CONSTRUCTORS[name](eps, seed=np.int64(4))
    assert type(atk.eps) is float and atk.eps == float(eps)
    assert type(atk.seed) is int and atk.seed == 4
    json.dumps(atk._describe())  # reports can record it


def test_numpy_numbers_match_python_numbers():
    x, y = _batch()
    model = small_cnn(size=8)
    pairs = [
        (PGD(model, np.float64(0.1), steps=np.int64(2), alpha=np.float32(0.05), restarts=np.int64(2), seed=np.int64(1)),
         PGD(model, 0.1, steps=2, alpha=float(np.float32(0.05)), restarts=2, seed=1)),
        (LoRaPGD(model, np.float32(0.5), rank=np.int64(2), steps=np.int64(2), seed=np.int64(0)),
         LoRaPGD(model, float(np.float32(0.5)), rank=2, steps=2, seed=0)),
        (LoRaPGD(model, 0.5, rank=np.float32(0.25), steps=2, seed=0),
         LoRaPGD(model, 0.5, rank=float(np.float32(0.25)), steps=2, seed=0)),
        (RankProjectedPGD(model, 0.5, rank=np.int32(3), steps=np.int64(2), seed=0),
         RankProjectedPGD(model, 0.5, rank=3, steps=2, seed=0)),
    ]
    for ours, plain in pairs:
        assert repr(ours) == repr(plain)
        torch.testing.assert_close(ours(x, y), plain(x, y), rtol=0, atol=0)


def test_lora_factors_take_numpy_steps():
    x, y = _batch()
    atk = LoRaPGD(small_cnn(size=8), 0.5, rank=2, steps=3, seed=0)
    u, v = atk.factors(x, y, steps=np.int64(0))
    assert float(v.abs().max()) == 0.0  # 0 steps: the lora init
    with pytest.raises(ValueError, match="steps"):
        atk.factors(x, y, steps=True)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_build_attack_takes_numpy_numbers(name):
    rank = np.int64(2) if "lora" in name or "rank" in name else None
    atk = build_attack(name, TINY, np.float32(0.125), rank=rank, steps=np.int64(2), restarts=np.int64(1),
                       seed=np.int64(3))
    assert atk.eps == 0.125 and atk.seed == 3
    if rank is not None:
        assert type(atk.rank) is int and atk.rank == 2


def test_rank_kinds():
    assert check_rank_spec(np.int64(3)) == 3 and type(check_rank_spec(np.int64(3))) is int
    assert type(check_rank_spec(np.float32(0.1))) is float  # a non-integral real number is a fraction
    assert resolve_rank(np.float32(0.1), 32) == 3
    assert resolve_rank(np.int64(5), 28) == 5
    assert resolve_rank(np.float64(1.0), 28) == 28
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 28\]"):
        resolve_rank(np.int64(29), 28)
    for bad in (True, np.bool_(True), np.float32(1.5), np.float64("nan")):
        with pytest.raises(ValueError, match="rank"):
            check_rank_spec(bad)


@pytest.mark.parametrize("make,match", [
    (lambda: PGD(TINY, True), "eps"),
    (lambda: PGD(TINY, 0.1, alpha=True), "alpha"),
    (lambda: PGD(TINY, 0.1, steps=True), "steps"),
    (lambda: PGD(TINY, 0.1, restarts=np.bool_(True)), "restarts"),
    (lambda: PGD(TINY, 0.1, seed=True), "seed"),
    (lambda: PGD(TINY, 0.1, seed=2**200), "seed"),
    (lambda: PGD(TINY, 0.1, seed=np.float64(1.0)), "seed"),
    (lambda: LoRaPGD(TINY, 0.5, rank=True), "rank"),
    (lambda: RankProjectedPGD(TINY, 0.5, rank=np.bool_(True)), "rank"),
    (lambda: build_attack("fgsm", TINY, 0.1, steps=0), "steps"),
    (lambda: build_attack("fgsm", TINY, 0.1, restarts=True), "restarts"),
])
def test_bools_and_non_integers_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
