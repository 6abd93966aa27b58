"""LoRa-APGD (robustlr.attacks.lora_apgd): the factors against a plain float64 reference of the algorithm on real
Fashion-MNIST, the rank and the budget, the returned point's loss, batch independence, seeds, host round trips,
dtypes and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlr.attacks import LoRaPGD
from robustlr.attacks.apgd_schedule import APGDSchedule
from robustlr.attacks.lora_apgd import STEP_SIZE, LoRaAPGD
from robustlr.profiling import HostSyncs

EPS = {"l2": 1.0, "linf": 0.1}

torch.manual_seed(0)
_TINY = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


def _tiny_batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 3×8×8 images labelled with the tiny model's own predictions (all correctly classified)."""
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, _TINY(x).argmax(dim=1)


@pytest.fixture(scope="module")
def images(fmnist, fmnist_model):
    """32 real Fashion-MNIST test images: 30 the model classifies correctly, then 2 it gets wrong."""
    _, test = fmnist
    x, y = test.images[:400], test.labels[:400]
    with torch.no_grad():
        right = fmnist_model(x).argmax(dim=1) == y
    keep = torch.cat([right.nonzero()[:30, 0], (~right).nonzero()[:2, 0]])
    return x[keep], y[keep]


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, u: torch.Tensor, steps: int):
    """The module docstring's algorithm written plainly, in float64, with autograd's gradients: the factors it
    returns."""
    def evaluate(u, v):
        u, v = u.detach().requires_grad_(True), v.detach().requires_grad_(True)
        d = u @ v
        x_adv = (x + eps * d / (d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y, reduction="none")
        g_u, g_v = torch.autograd.grad(loss.sum(), [u, v])
        return logits.argmax(dim=1) != y, loss.detach(), g_u, g_v

    def unit(g):
        return g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)

    v = torch.zeros(u.shape[0], u.shape[1], u.shape[3], x.shape[3], dtype=x.dtype)
    clean_wrong, loss, g_u, g_v = evaluate(u, v)
    fooled, fool_u, fool_v = clean_wrong.clone(), u.clone(), v.clone()
    schedule = APGDSchedule(steps, STEP_SIZE, loss, (u, v, g_u, g_v), 0.75)
    prev_u, prev_v = u, v
    for step in range(1, steps + 1):
        a = 1.0 if step == 1 else 0.75
        eta = schedule.eta.view(-1, 1, 1, 1)
        z_u, z_v = u + eta * unit(g_u), v + eta * unit(g_v)
        new_u, new_v = u + a * (z_u - u) + (1 - a) * (u - prev_u), v + a * (z_v - v) + (1 - a) * (v - prev_v)
        prev_u, prev_v, u, v = u, v, new_u, new_v
        now, loss, g_u, g_v = evaluate(u, v)
        fool_u[now], fool_v[now] = u[now], v[now]
        fooled |= now
        u, v, g_u, g_v = schedule.update(step, loss, (u, v, g_u, g_v))
    assert (schedule.eta < STEP_SIZE).any()  # some step sizes were halved (and those samples restarted)
    best_u, best_v = schedule.best[:2]
    u = torch.where(fooled.view(-1, 1, 1, 1), fool_u, best_u)
    v = torch.where(fooled.view(-1, 1, 1, 1), fool_v, best_v)
    u[clean_wrong], v[clean_wrong] = 0.0, 0.0
    return u, v


def test_factors_equal_the_float64_reference(fmnist_model, images):
    """30 steps (checkpoints 7, 13, 18, 22, 25, 28: halvings and restarts from the best factors happen) on real
    images, two of them misclassified clean (their factors come back zero)."""
    model = copy.deepcopy(fmnist_model).double()
    x, y = images[0].double()[:12], images[1][:12]
    x, y = torch.cat([x, images[0].double()[-2:]]), torch.cat([y, images[1][-2:]])
    atk = LoRaAPGD(model, 1.0, rank=3, steps=30, seed=0)
    u0, v0 = atk.factors(x, y, steps=0)
    assert torch.equal(v0, torch.zeros_like(v0))
    u, v = atk.factors(x, y)
    ref_u, ref_v = _reference(model, x, y, 1.0, u0, 30)
    torch.testing.assert_close(u, ref_u, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(v, ref_v, rtol=1e-7, atol=1e-9)
    assert (u[-2:] == 0).all() and (u[:-2] != 0).any(dim=(1, 2, 3)).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_rank_budget_box_and_the_output_of_the_factors(fmnist_model, images, norm):
    """rank(UV) ≤ r per channel; the returned images are clip(x + ε·UV/‖UV‖) of the returned factors, inside
    the ε-ball and [0, 1]; misclassified images come back unchanged; some images are fooled."""
    x, y = images
    eps = EPS[norm]
    atk = LoRaAPGD(fmnist_model, eps, rank=3, norm=norm, steps=20, seed=0)
    adv = atk(x, y)
    u, v = atk.factors(x, y)
    assert int(torch.linalg.matrix_rank(u.double() @ v.double()).max()) <= 3
    torch.testing.assert_close(adv, atk.images(x, u, v), rtol=0, atol=1e-6)
    delta = (adv.double() - x.double()).flatten(1)
    norms = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (norms <= eps).all() and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv[-2:], x[-2:])
    with torch.no_grad():
        fooled = fmnist_model(adv[:-2]).argmax(dim=1) != y[:-2]
    assert fooled.sum() >= 5, fooled.sum()


def test_unfooled_images_end_at_a_loss_at_least_the_clean_one(fmnist_model, images):
    """The result of an image that is not fooled is its best iterate, whose loss is at least that of the start
    (the clean image): the attack never returns a point worse than doing nothing."""
    x, y = images[0][:30], images[1][:30]
    adv = LoRaAPGD(fmnist_model, 0.3, rank=2, steps=10, seed=0)(x, y)
    with torch.no_grad():
        logits, clean = fmnist_model(adv), fmnist_model(x)
    kept = logits.argmax(dim=1) == y
    assert kept.sum() >= 5
    loss = F.cross_entropy(logits, y, reduction="none")
    assert (loss[kept] >= F.cross_entropy(clean, y, reduction="none")[kept] - 1e-5).all()


def test_stronger_than_lora_pgd_at_equal_passes(fmnist, fmnist_model):
    """At 30 forward-backward passes (LoRa-PGD: 30 steps; LoRa-APGD: the start + 29 steps), rank 3, ε = 1, on
    the first 100 test images the model classifies correctly, LoRa-APGD leaves fewer of them robust (measured:
    23 vs 25; docs/attacks.md, "LoRa-APGD", compares them at scale)."""
    _, test = fmnist
    x, y = test.images[:200], test.labels[:200]
    with torch.no_grad():
        keep = (fmnist_model(x).argmax(dim=1) == y).nonzero()[:100, 0]
    x, y = x[keep], y[keep]
    with torch.no_grad():
        robust = [int((fmnist_model(atk(x, y)).argmax(dim=1) == y).sum()) for atk in
                  (LoRaAPGD(fmnist_model, 1.0, 3, steps=29, seed=0), LoRaPGD(fmnist_model, 1.0, 3, steps=30, seed=0))]
    assert robust[0] < robust[1], robust


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_a_batch_equals_its_images_alone_and_seeds_reproduce(norm):
    x, y = _tiny_batch()
    atk = LoRaAPGD(_TINY, EPS[norm], rank=2, norm=norm, steps=12, restarts=2, seed=0)
    rng = torch.random.get_rng_state()
    together = atk(x, y)
    assert torch.equal(torch.random.get_rng_state(), rng)
    alone = torch.cat([atk(x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(atk(x.flip(0), y.flip(0)).flip(0), together, rtol=1e-5, atol=1e-5)
    assert torch.equal(LoRaAPGD(_TINY, EPS[norm], 2, norm, steps=12, restarts=2, seed=0)(x, y), together)
    assert not torch.equal(LoRaAPGD(_TINY, EPS[norm], 2, norm, steps=12, restarts=2, seed=1)(x, y), together)


@pytest.mark.parametrize(("norm", "restarts"), [("l2", 1), ("linf", 2)])
def test_one_host_round_trip_per_call_for_10_and_100_steps(norm, restarts):
    x, y = _tiny_batch(4)
    counts = []
    for steps in (10, 100):
        with HostSyncs() as syncs:
            LoRaAPGD(_TINY, EPS[norm], 2, norm, steps=steps, restarts=restarts, seed=0)(x, y)
        counts.append(syncs)
    assert counts[0].total == counts[1].total == 1, counts
    assert counts[0].events == {"copy to host: Tensor.tolist": 1}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_budget_and_box_hold_in_every_dtype(dtype):
    x, y = _tiny_batch()
    model = copy.deepcopy(_TINY).to(dtype)
    adv = LoRaAPGD(model, 1.0, 2, steps=5, seed=0)(x.to(dtype), y)
    assert adv.dtype == dtype and torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    norms = (adv.double() - x.to(dtype).double()).flatten(1).norm(dim=1)
    assert (norms <= 1.0).all() and norms.max() > 0.5


def test_targeted_reaches_targets_and_eps_zero_is_the_identity():
    x, y = _tiny_batch(6)
    target = (y + 1) % 10
    adv = LoRaAPGD(_TINY, 3.0, 2, steps=20, seed=0)(x, target, targeted=True)
    with torch.no_grad():
        assert (_TINY(adv).argmax(dim=1) == target).sum() >= 2
    assert torch.equal(LoRaAPGD(_TINY, 0.0, 2, steps=5, seed=0)(x, y), x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps must be an integer >= 1"), ({"steps": 2.5}, "steps must be an integer"),
    ({"rho": 0.0}, r"rho must be a number in \(0, 1\]"), ({"rho": 1.5}, "rho"), ({"rho": True}, "rho"),
    ({"rank": 0}, "rank"), ({"rank": 1.5}, "rank"), ({"norm": "l1"}, "norm must be one of"),
    ({"eps": -1.0}, "eps must be a finite number >= 0"), ({"restarts": 0}, "restarts must be an integer >= 1"),
    ({"loss": "cw"}, "loss must be one of"), ({"seed": 0.5}, "seed must be an integer"),
    ({"loss_scale": 0}, "loss_scale must be a finite number > 0"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRaAPGD(_TINY, **{"eps": 1.0, **kwargs})


def test_rank_larger_than_the_image_is_refused_at_the_call():
    x, y = _tiny_batch(2)
    with pytest.raises(ValueError, match="rank"):
        LoRaAPGD(_TINY, 1.0, rank=9, steps=2)(x, y)


def test_the_registry_builds_it_by_name_with_apgds_100_steps():
    from robustlr.attacks import ATTACK_NAMES, RANKED_ATTACKS, attack_norm, build_attack

    for name, norm in (("lora-apgd", "l2"), ("lora-apgd-linf", "linf")):
        assert name in ATTACK_NAMES and name in RANKED_ATTACKS and attack_norm(name) == norm
        atk = build_attack(name, _TINY, 0.5, rank=2)
        assert type(atk) is LoRaAPGD and atk.norm == norm and atk.steps == 100 and atk.rank == 2
        assert build_attack(name, _TINY, 0.5, rank=0.25, steps=7, restarts=2).steps == 7
        with pytest.raises(ValueError, match=f"attack '{name}' needs a rank"):
            build_attack(name, _TINY, 0.5)
    x, y = _tiny_batch(3)
    assert torch.equal(build_attack("lora-apgd", _TINY, 0.5, rank=2, steps=5, seed=4)(x, y),
                       LoRaAPGD(_TINY, 0.5, rank=2, steps=5, seed=4)(x, y))
