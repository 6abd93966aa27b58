"""Attacks: budgets, ranks, the LoRa-PGD identities, determinism, batch independence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustlr.attacks import FGSM, PGD, LoRaPGD, RankProjectedPGD
from robustlr.attacks.projections import per_sample_norm


def all_attacks(model, norm):
    eps = 0.1 if norm == "linf" else 1.0
    return [
        FGSM(model, eps, norm),
        PGD(model, eps, norm, steps=5, seed=0),
        PGD(model, eps, norm, steps=3, restarts=3, seed=0),
        LoRaPGD(model, eps, rank=3, norm=norm, steps=5, seed=0),
        LoRaPGD(model, eps, rank=0.2, norm=norm, steps=5, init="svd", seed=0),
        RankProjectedPGD(model, eps, rank=3, norm=norm, steps=5, project="every"),
        RankProjectedPGD(model, eps, rank=3, norm=norm, steps=5, project="last", random_start=True, seed=0),
    ]


def channel_ranks(delta: torch.Tensor) -> np.ndarray:
    """Numerical rank of each channel: singular values above 1e-5·σ₁ (float32 round-off is ~1e-7·σ₁)."""
    s = np.linalg.svd(delta.detach().double().numpy(), compute_uv=False)
    return (s > 1e-5 * s[..., :1]).sum(-1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budget_and_box(cnn, batch, norm):
    x, y = batch
    for atk in all_attacks(cnn, norm):
        x_adv = atk(x, y)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1, atk
        assert bool((per_sample_norm(x_adv - x, norm) <= atk.eps + 1e-6).all()), atk


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_increase_loss(cnn, batch, norm):
    x, y = batch
    ce = lambda z: nn.functional.cross_entropy(cnn(z), y).item()
    for atk in all_attacks(cnn, norm):
        assert ce(atk(x, y)) > ce(x), atk


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_lora_pgd_rank_before_clipping(cnn, batch, norm):
    x, y = batch
    atk = LoRaPGD(cnn, 0.1 if norm == "linf" else 1.0, rank=3, norm=norm, steps=4, seed=0)
    u, v = atk.factors(x, y)
    delta = atk.perturbation(u, v)
    assert (channel_ranks(delta) <= 3).all()
    assert bool((per_sample_norm(delta, norm) <= atk.eps * (1 + 1e-6)).all())
    # on the sphere, as the paper's rescaling puts it
    torch.testing.assert_close(per_sample_norm(delta, norm), torch.full((len(x),), atk.eps), rtol=1e-5, atol=1e-6)
    # away from the box edges no clipping happens, so the returned perturbation has rank <= r too
    x_mid = 0.25 + 0.5 * x
    x_adv = LoRaPGD(cnn, 0.2 if norm == "linf" else 1.0, rank=3, norm=norm, steps=4, seed=0)(x_mid, y)
    assert (channel_ranks(x_adv - x_mid) <= 3).all()


def test_rank_projected_pgd_rank(rgb_cnn, rgb_batch):
    x, y = rgb_batch
    x_mid = 0.25 + 0.5 * x
    for project in ("last", "every"):
        x_adv = RankProjectedPGD(rgb_cnn, 1.0, rank=2, project=project, steps=4)(x_mid, y)
        assert (channel_ranks(x_adv - x_mid) <= 2).all()
    full = PGD(rgb_cnn, 1.0, "l2", steps=4, random_start=False)(x_mid, y)
    assert (channel_ranks(full - x_mid) > 2).any()


def test_lora_init_identities(cnn, batch):
    """Brief §1.4: U does not move at the first step; ‖U‖², ‖V‖² grow by exactly 1 per update."""
    x, y = batch
    atk = LoRaPGD(cnn, 1.0, rank=4, steps=6, seed=3)
    u0, v0 = atk.factors(x, y, steps=0)
    assert float(v0.abs().max()) == 0.0
    torch.testing.assert_close(per_sample_norm(u0, "l2"), torch.ones(len(x)))
    u1, v1 = atk.factors(x, y, steps=1)
    torch.testing.assert_close(u1, u0)
    for k in range(1, 7):
        u, v = atk.factors(x, y, steps=k)
        sq_u, sq_v = per_sample_norm(u, "l2") ** 2, per_sample_norm(v, "l2") ** 2
        torch.testing.assert_close(sq_u, torch.full_like(sq_u, max(1, k)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sq_v, torch.full_like(sq_v, float(k)), rtol=1e-4, atol=1e-4)
        assert torch.isfinite(u).all() and torch.isfinite(v).all()


def test_svd_init_is_eckart_young(rgb_cnn, rgb_batch):
    x, y = rgb_batch
    eps, r = 1.0, 3
    x0 = x.clone().requires_grad_(True)
    g = torch.autograd.grad(nn.functional.cross_entropy(rgb_cnn(x0), y, reduction="sum"), x0)[0]
    g_unit = g / g.flatten(1).norm(dim=1)[:, None, None, None]
    delta0 = ((x + eps * g_unit).clamp(0, 1) - x).double().numpy()
    u0, v0 = LoRaPGD(rgb_cnn, eps, rank=r, init="svd").factors(x, y, steps=0)
    low = (u0 @ v0).double().numpy()
    for b in range(len(x)):
        for c in range(3):
            s = np.linalg.svd(delta0[b, c], compute_uv=False)
            err = np.linalg.norm(delta0[b, c] - low[b, c])
            np.testing.assert_allclose(err, np.sqrt((s[r:] ** 2).sum()), rtol=1e-4, atol=1e-6)
    # balanced split: ‖U₀‖² = ‖V₀‖² = Σ of the top-r singular values
    torch.testing.assert_close(per_sample_norm(u0, "l2"), per_sample_norm(v0, "l2"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batch_of_one_equals_batch_of_many(cnn, batch, norm):
    x, y = batch
    for atk in all_attacks(cnn, norm):
        whole = atk(x, y)
        alone = torch.cat([atk(x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(whole, alone, rtol=1e-5, atol=1e-5, msg=repr(atk))
        reordered = atk(x.flip(0), y.flip(0)).flip(0)
        torch.testing.assert_close(whole, reordered, rtol=1e-5, atol=1e-5, msg=repr(atk))


def test_same_seed_same_output_and_global_rng_untouched(cnn, batch):
    x, y = batch
    for cls, kw in [(PGD, {"eps": 0.1}), (LoRaPGD, {"eps": 1.0, "rank": 3})]:
        state = torch.random.get_rng_state()
        a = cls(cnn, seed=7, steps=3, **kw)(x, y)
        assert torch.equal(torch.random.get_rng_state(), state)
        b = cls(cnn, seed=7, steps=3, **kw)(x, y)
        c = cls(cnn, seed=8, steps=3, **kw)(x, y)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_restarts_never_worse_per_sample(cnn, batch):
    x, y = batch
    ce = lambda z: nn.functional.cross_entropy(cnn(z), y, reduction="none")
    single = PGD(cnn, 0.05, steps=2, seed=0)(x, y)
    multi = PGD(cnn, 0.05, steps=2, restarts=4, seed=0)(x, y)
    fooled_single = cnn(single).argmax(1) != y
    fooled_multi = cnn(multi).argmax(1) != y
    assert bool((fooled_multi | ~fooled_single).all())
    better_or_fooled = (ce(multi) >= ce(single) - 1e-6) | fooled_multi
    assert bool(better_or_fooled.all())


def test_targeted_mode_reaches_target(cnn, batch):
    x, y = batch
    target = (y + 1) % 10
    adv = PGD(cnn, 0.3, steps=20, seed=0)(x, target, targeted=True)
    hits = (cnn(adv).argmax(1) == target).float().mean()
    base = (cnn(x).argmax(1) == target).float().mean()
    assert hits > base and hits >= 0.5
    lora = LoRaPGD(cnn, 3.0, rank=6, steps=20, seed=0)(x, target, targeted=True)
    p_t = lambda z: torch.softmax(cnn(z), 1).gather(1, target[:, None]).mean()
    assert p_t(lora) > p_t(x)


def test_margin_loss(cnn, batch):
    x, y = batch
    adv = PGD(cnn, 0.1, steps=5, seed=0, loss="margin")(x, y)
    z = cnn(adv)
    margin = lambda z: (z.scatter(1, y[:, None], -1e9).amax(1) - z.gather(1, y[:, None]).squeeze(1)).mean()
    assert margin(z) > margin(cnn(x))


def test_eps_zero_returns_input(cnn, batch):
    x, y = batch
    for atk in (FGSM(cnn, 0.0), PGD(cnn, 0.0), LoRaPGD(cnn, 0.0, 3), RankProjectedPGD(cnn, 0.0, 3)):
        out = atk(x, y)
        assert torch.equal(out, x) and out is not x


def test_model_mode_restored_also_on_error(batch):
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5))
    model.train()
    PGD(model, 0.1, steps=1)(x, y)
    assert model.training
    bad = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))  # labels up to 9 > 3 logits
    bad.train()
    with pytest.raises(ValueError, match="y must hold labels"):
        PGD(bad, 0.1, steps=1)(x, y)
    assert bad.training
    model.eval()
    PGD(model, 0.1, steps=1)(x, y)
    assert not model.training


class _Mixed(nn.Module):
    """A model whose submodules are in deliberately different modes."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(784, classes))

    def forward(self, x):
        return self.fc(self.drop(self.bn(x)))


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("make", [lambda m: PGD(m, 0.1, steps=1, seed=0), lambda m: LoRaPGD(m, 0.5, 3, steps=1, seed=0),
                                  lambda m: FGSM(m, 0.1), lambda m: RankProjectedPGD(m, 0.5, 3, steps=1)])
def test_every_submodule_mode_restored_also_on_error(batch, make):
    """A frozen BatchNorm in a training model stays in eval; an MC-dropout block in an eval model stays in
    train; the attack itself runs every submodule in eval mode."""
    x, y = batch
    frozen_bn = _Mixed()
    frozen_bn.train()
    frozen_bn.bn.eval()
    mc_dropout = _Mixed()
    mc_dropout.eval()
    mc_dropout.drop.train()
    for model in (frozen_bn, mc_dropout):
        before = _modes(model)
        seen = []
        hook = model.drop.register_forward_pre_hook(lambda module, args: seen.append(_modes(model)))
        make(model)(x, y)
        hook.remove()
        assert _modes(model) == before
        assert seen and all(not any(modes.values()) for modes in seen)
    bad = _Mixed(classes=3)  # labels up to 9 > 3 logits
    bad.train()
    bad.bn.eval()
    before = _modes(bad)
    with pytest.raises(ValueError, match="y must hold labels"):
        make(bad)(x, y)
    assert _modes(bad) == before


def test_dtype_and_device_follow_input(cnn, batch):
    x, y = batch
    model = cnn.double()
    out = LoRaPGD(model, 1.0, 3, steps=2, seed=0)(x.double(), y)
    assert out.dtype == torch.float64


def test_state_bytes_ratio():
    model = nn.Identity()
    shape = (100, 3, 32, 32)
    lora = LoRaPGD(model, 0.5, rank=3)
    pgd = PGD(model, 0.5, "l2")
    assert lora.state_bytes(shape) / pgd.state_bytes(shape) == pytest.approx(2 * 3 / 32)


# --------------------------------------------------------------------------- bad input
def _x(shape=(2, 1, 8, 8)):
    return torch.full(shape, 0.5)


TINY = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize(
    "x,y,match",
    [
        (torch.rand(1, 8, 8), torch.zeros(1, dtype=torch.long), "x must be a 4-D"),
        (torch.ones(2, 1, 8, 8, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floating"),
        (_x().index_fill(0, torch.tensor([0]), float("nan")), torch.zeros(2, dtype=torch.long), "finite"),
        (_x() + 0.6, torch.zeros(2, dtype=torch.long), r"\[0, 1\]"),
        (_x() - 0.6, torch.zeros(2, dtype=torch.long), r"\[0, 1\]"),
        (_x(), torch.zeros(2), "integer"),
        (_x(), torch.zeros(3, dtype=torch.long), "shape"),
        (_x(), torch.tensor([0, -1]), ">= 0"),
        (_x(), torch.tensor([0, 10]), r"labels in \[0, 9\]"),
        (torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "at least one"),
    ],
)
def test_bad_inputs(x, y, match):
    for atk in (FGSM(TINY, 0.1), PGD(TINY, 0.1, steps=1), LoRaPGD(TINY, 0.5, 2, steps=1)):
        with pytest.raises(ValueError, match=match):
            atk(x, y)


def test_tiny_range_violation_is_tolerated():
    x = _x().clone()
    x[0, 0, 0, 0] = 1 + 5e-7
    PGD(TINY, 0.1, steps=1)(x, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PGD(TINY, -0.1), "eps"),
        (lambda: PGD(TINY, float("nan")), "eps"),
        (lambda: PGD(TINY, 0.1, steps=0), "steps"),
        (lambda: PGD(TINY, 0.1, steps=2.5), "steps"),
        (lambda: PGD(TINY, 0.1, alpha=0.0), "alpha"),
        (lambda: PGD(TINY, 0.1, norm="l1"), "norm"),
        (lambda: PGD(TINY, 0.1, restarts=0), "restarts"),
        (lambda: PGD(TINY, 0.1, loss="hinge"), "loss"),
        (lambda: PGD(TINY, 0.1, seed="x"), "seed"),
        (lambda: FGSM(TINY, -1.0), "eps"),
        (lambda: LoRaPGD(TINY, 0.5, rank=0), "rank"),
        (lambda: LoRaPGD(TINY, 0.5, rank=1.5), "rank"),
        (lambda: LoRaPGD(TINY, 0.5, rank=3, init="fgsm"), "init"),
        (lambda: LoRaPGD(TINY, 0.5, rank=3, steps=0), "steps"),
        (lambda: RankProjectedPGD(TINY, 0.5, rank=3, project="first"), "project"),
        (lambda: PGD("not a model", 0.1), "model"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rank_larger_than_image_rejected_at_call():
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 8\]"):
        LoRaPGD(TINY, 0.5, rank=9, steps=1)(_x(), torch.zeros(2, dtype=torch.long))


def test_model_with_wrong_output_shape_rejected():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="logits of shape"):
        PGD(flat, 0.1, steps=1)(_x(), torch.zeros(2, dtype=torch.long))
