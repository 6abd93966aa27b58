"""Host round trips of one attack call (robustlr.profiling.HostSyncs): a small constant, the same for 10 and
100 steps, so an attack never waits for the host inside its loop (issue 11 §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlr.attacks import FGSM, PGD, LoRaPGD, RankProjectedPGD
from robustlr.profiling import HostSyncs

CALL_BUDGET = 1
"""Round trips per attack call: the fused input check reads one tensor of five numbers (``.tolist()``); the
keys, the noise, the steps, the restarts and the final budget fit read nothing."""

ATTACKS = {
    "pgd-linf": lambda steps: PGD(_MODEL, 0.1, "linf", steps=steps, seed=0),
    "pgd-l2-restarts": lambda steps: PGD(_MODEL, 0.5, "l2", steps=steps, restarts=3, seed=0),
    "lora-l2": lambda steps: LoRaPGD(_MODEL, 0.5, 2, "l2", steps=steps, seed=0),
    "lora-linf-svd": lambda steps: LoRaPGD(_MODEL, 0.1, 2, "linf", steps=steps, init="svd", restarts=2, seed=0),
    "rank-pgd-every": lambda steps: RankProjectedPGD(_MODEL, 0.5, 2, steps=steps, project="every", random_start=True),
}

torch.manual_seed(0)
_MODEL = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def _syncs(attack) -> HostSyncs:
    x, y = _batch()
    with HostSyncs() as syncs:
        attack(x, y)
    return syncs


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_call_makes_one_round_trip_for_10_and_100_steps(name):
    few, many = _syncs(ATTACKS[name](10)), _syncs(ATTACKS[name](100))
    assert few.total == many.total == CALL_BUDGET, (few, many)
    assert few.events == {"copy to host: Tensor.tolist": 1}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_call_makes_one_round_trip(norm):
    assert _syncs(FGSM(_MODEL, 0.1, norm)).total == CALL_BUDGET


def test_lora_factors_make_one_round_trip():
    x, y = _batch()
    atk = LoRaPGD(_MODEL, 0.5, 2, steps=10, seed=0)
    with HostSyncs() as syncs:
        atk.factors(x, y)
    assert syncs.total == CALL_BUDGET


def test_no_noise_no_keys(monkeypatch):
    """Attacks that draw nothing (FGSM, PGD without random start, LoRa-PGD's svd init) never hash the batch."""
    import robustlr.attacks.base as base

    calls = []
    monkeypatch.setattr(base, "sample_keys", lambda x: calls.append(x) or torch.zeros(len(x), dtype=torch.int64))
    x, y = _batch()
    for atk in (FGSM(_MODEL, 0.1), PGD(_MODEL, 0.1, steps=2, random_start=False),
                LoRaPGD(_MODEL, 0.5, 2, steps=2, init="svd"), RankProjectedPGD(_MODEL, 0.5, 2, steps=2)):
        atk(x, y)
    assert calls == []
    PGD(_MODEL, 0.1, steps=2, restarts=3, seed=0)(x, y)
    assert len(calls) == 1  # once per call, shared by the restarts


def test_data_dependent_sizes_are_round_trips():
    """``nonzero``, ``torch.where(mask)``, boolean-mask reads and writes and ``masked_select`` make the host wait
    for a size on a GPU and are counted; ``nonzero_static``, integer indexing and ``data_sizes=False`` are not."""
    x = torch.rand(10)
    mask = x > 0.5
    with HostSyncs() as syncs:
        x[mask], mask.nonzero(), torch.where(mask), x.masked_select(mask)
        x[mask] = 0.0
        torch.nonzero_static(mask, size=3), x[torch.tensor([1, 2])]
    assert syncs.events == {"size from data: nonzero": 2, "size from data: index with a boolean mask": 1,
                            "size from data: index_put_ with a boolean mask": 1, "size from data: masked_select": 1}
    with HostSyncs(data_sizes=False) as syncs:
        x[mask], mask.nonzero()
    assert syncs.total == 0
