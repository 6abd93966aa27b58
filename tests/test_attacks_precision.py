"""Attacks in low precision: float16 / bfloat16 models and images, and float32 models under CPU autocast.

The attack's arithmetic runs in float32 and the budget must hold in the dtype the model sees: no NaN, the
dtype of ``x`` returned, ``x_adv ∈ [0, 1]`` and ``‖x_adv − x‖ ≤ ε`` measured in float64 on the returned
tensors (before: LoRa-PGD returned all-NaN images in float16, PGD-L∞ reached ‖δ‖∞ = 0.1010 in float16 and
0.1016 in bfloat16 at ε = 0.1).  Conv2d, max-pooling and their backward passes exist in float16 on CPU in
torch 2.13, so the models are the suite's small CNN.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlr.attacks import FGSM, PGD, LoRaPGD, RankProjectedPGD
from robustlr.attacks.projections import fit_budget, project_ball

from conftest import small_cnn

LINF, L2 = 0.1, 1.0

ATTACKS = {
    "fgsm": lambda m: FGSM(m, LINF),
    "fgm-l2": lambda m: FGSM(m, L2, "l2"),
    "pgd-linf": lambda m: PGD(m, LINF, "linf", steps=3, seed=0),
    "pgd-l2": lambda m: PGD(m, L2, "l2", steps=3, seed=0),
    "lora-linf": lambda m: LoRaPGD(m, LINF, rank=2, norm="linf", steps=3, seed=0),
    "lora-l2": lambda m: LoRaPGD(m, L2, rank=2, norm="l2", steps=3, seed=0),
    "lora-svd": lambda m: LoRaPGD(m, L2, rank=2, norm="l2", steps=3, init="svd", seed=0),
    "rank-pgd-l2": lambda m: RankProjectedPGD(m, L2, rank=2, steps=3),
    "rank-pgd-linf": lambda m: RankProjectedPGD(m, LINF, rank=2, norm="linf", steps=3, project="every"),
}


def _batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.rand(4, 1, 12, 12, generator=gen).to(dtype), torch.randint(0, 10, (4,), generator=gen)


def _assert_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert not bool(x_adv.isnan().any())
    wide = x_adv.double()
    assert float(wide.min()) >= 0.0 and float(wide.max()) <= 1.0
    delta = (wide - x.double()).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(delta, dim=1)
    assert bool((size <= eps).all()), (float(size.max()), eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_low_precision_model_and_images(name, dtype):
    model = small_cnn(size=12).to(dtype)
    x, y = _batch(dtype)
    atk = ATTACKS[name](model)
    x_adv = atk(x, y)
    _assert_budget(x_adv, x, atk.eps, atk.norm)
    assert bool((x_adv != x).any())  # the attack did move the images


@pytest.mark.parametrize("name", list(ATTACKS))
def test_float32_model_under_cpu_autocast(name):
    model = small_cnn(size=12)
    x, y = _batch()
    atk = ATTACKS[name](model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = atk(x, y)
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast state is left as it was
    _assert_budget(x_adv, x, atk.eps, atk.norm)


def test_autocast_reaches_the_model_but_not_the_attack_arithmetic():
    seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn(size=12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
            return self.net(x)

    x, y = _batch()
    atk = LoRaPGD(Probe(), L2, rank=2, steps=2, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, v = atk.factors(x, y)
    assert seen and all(s == (torch.float32, True) for s in seen)
    assert u.dtype == v.dtype == torch.float32


def test_lora_factors_of_half_images_are_float32():
    model = small_cnn(size=12).half()
    x, y = _batch(torch.float16)
    atk = LoRaPGD(model, L2, rank=2, steps=2, seed=0)
    u, v = atk.factors(x, y)
    assert u.dtype == v.dtype == torch.float32 and bool(torch.isfinite(u).all() and torch.isfinite(v).all())
    _assert_budget(atk.images(x, u, v), x, L2, "l2")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.003), ("l2", 1.0), ("l2", 0.05)])
def test_fit_budget_holds_in_the_output_dtype(dtype, norm, eps):
    """Rounding to nearest would exceed ε; fit_budget rounds toward x and stays within one ulp of it."""
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(64, 3, 8, 8, generator=gen).to(dtype).float()
    delta = (torch.rand(64, 3, 8, 8, generator=gen) * 2 - 1) * (eps if norm == "linf" else eps / 4)
    x_adv = fit_budget(delta, x, eps, norm, dtype)
    _assert_budget(x_adv, x.to(dtype), eps, norm)
    nearest = (x + project_ball(delta, eps, norm)).clamp(0, 1).to(dtype).float()
    ulp = torch.finfo(dtype).eps  # the spacing at 1, the largest in [0, 1]
    assert float((x_adv.float() - nearest).abs().max()) <= ulp + 1e-6  # 1e-6: the L2 correction margin


def test_fit_budget_linf_matches_nearest_rounding_where_it_is_inside():
    x = torch.tensor([0.5, 0.25, 0.0, 1.0]).reshape(1, 1, 2, 2)
    delta = torch.tensor([0.1, -0.1, 0.05, -0.2]).reshape(1, 1, 2, 2)
    out = fit_budget(delta, x, 0.1, "linf", torch.bfloat16)
    naive = (x + delta).clamp(0, 1).to(torch.bfloat16)
    assert float((naive.double() - x.double()).abs().max()) > 0.1  # nearest rounding leaves the budget
    assert float((out.double() - x.double()).abs().max()) <= 0.1
    assert out.dtype == torch.bfloat16


def test_pgd_l2_in_bfloat16_stays_in_budget(cnn, batch):
    """Rounded to nearest, PGD-L2 at ε = 1 on these 28×28 images reached ‖δ‖₂ = 1.0015 in bfloat16."""
    x, y = batch
    x = x.to(torch.bfloat16)
    x_adv = PGD(cnn.to(torch.bfloat16), L2, "l2", steps=5, seed=0)(x, y)
    _assert_budget(x_adv, x, L2, "l2")


# --------------------------------------------------------------------------- loss scale
def _confident_half_model() -> nn.Module:
    """A float16 linear model sure of class 0: on images labelled 0 the input gradient (≈ 1e-4 · 5e-5 per
    pixel) underflows float16, on images labelled 1 it does not."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(1e-4 * torch.sign(torch.randn(10, 64, generator=torch.Generator().manual_seed(0))))
        model[1].bias.zero_()
        model[1].bias[0] = 12.0
    return model.half()


def test_loss_scale_lifts_float16_gradients_above_underflow():
    x = (0.25 + 0.5 * torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))).half()
    y = torch.tensor([0, 0, 1, 1])
    model = _confident_half_model()
    unscaled = FGSM(model, 0.5, "l2", loss_scale=1.0)(x, y)
    auto = FGSM(model, 0.5, "l2")(x, y)
    moved = lambda adv: (adv != x).flatten(1).any(dim=1).tolist()
    assert moved(unscaled) == [False, False, True, True]  # the gradient of the confident samples is 0
    assert moved(auto) == [True, True, True, True]
    torch.testing.assert_close(auto[2:], unscaled[2:], rtol=0, atol=2e-3)  # same direction where both see one
    _assert_budget(auto, x, 0.5, "l2")


def test_loss_scale_leaves_float32_attacks_unchanged():
    model = small_cnn(size=12)
    x, y = _batch()
    for make in (lambda s: PGD(model, L2, "l2", steps=3, seed=0, loss_scale=s),
                 lambda s: LoRaPGD(model, L2, rank=2, steps=3, seed=0, loss_scale=s)):
        torch.testing.assert_close(make(2.0**12)(x, y), make(None)(x, y), rtol=0, atol=1e-6)
    assert PGD(model, LINF).loss_scale is None and PGD(model, LINF, loss_scale=8).loss_scale == 8.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 1e39, True, "2"])
def test_bad_loss_scale_refused(bad):
    with pytest.raises(ValueError, match="loss_scale must be"):
        PGD(small_cnn(size=12), LINF, loss_scale=bad)


# --------------------------------------------------------------------------- memory layout
@pytest.mark.parametrize("name", ["pgd-linf", "pgd-l2", "lora-l2", "lora-linf", "rank-pgd-linf", "fgsm"])
def test_channels_last_in_channels_last_out_equal_to_contiguous(name):
    model = small_cnn(in_channels=3, size=12)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 3, 12, 12, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    plain = ATTACKS[name](model)(x, y)
    last_x = x.contiguous(memory_format=torch.channels_last)
    last = ATTACKS[name](model.to(memory_format=torch.channels_last))(last_x, y)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.3)])
def test_what_apgd_and_fab_count_as_fooled_is_what_they_return(dtype, norm, eps):
    """Half-precision images: APGD keeps iterates that fooled the model and FAB its least-norm fooling points;
    each is checked as the image it is returned as (rounded to the dtype toward x, within ε), so every image
    the attack saw fool the model fools it as returned (before: APGD lost 1-4 % of them, FAB-T L2 in bfloat16
    returned 6 fooling images where it had found 30).  LoRa-APGD keeps the factors that fooled the model in the
    same way (before: it lost up to 15 % of them, bfloat16 L∞: 51 fooled as returned of 60 it had kept)."""
    from robustlr.attacks import APGD, FAB, LoRaAPGD

    model = small_cnn(size=8, seed=0).to(dtype)
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    apgd = APGD(model, eps, norm, steps=20, seed=0)
    seen: list[torch.Tensor] = []
    fooled_fn = apgd._fooled
    apgd._fooled = lambda logits, labels, targeted: seen.append(fooled_fn(logits, labels, targeted)) or seen[-1]
    lora = LoRaAPGD(model, eps, rank=2, norm=norm, steps=20, seed=0)
    lora_seen: list[torch.Tensor] = []
    lora_fooled = lora._fooled
    lora._fooled = lambda logits, labels, targeted: lora_seen.append(lora_fooled(logits, labels, targeted)) or \
        lora_seen[-1]
    fab = FAB(model, eps, norm, steps=10, n_target_classes=2, seed=0)
    found: list[torch.Tensor] = []
    descend = fab._descend
    fab._descend = lambda *args: (lambda out: found.append(out[1]) or out)(descend(*args))
    for atk, claimed in ((apgd, lambda: torch.stack([s for s in seen if s.shape == y.shape]).any(0)),
                         (lora, lambda: torch.stack([s.view(-1) for s in lora_seen]).any(0)),
                         (fab, lambda: torch.tensor(int(sum(int(f.sum()) for f in found))))):
        adv = atk(x, y)
        with torch.no_grad():
            fooled = model(adv).argmax(dim=1) != y
        assert int(fooled.sum()) >= 30
        if atk is not fab:
            assert bool((fooled >= claimed()).all()), (atk.name, int(claimed().sum()), int(fooled.sum()))
        else:
            assert int(fooled.sum()) == int(claimed())
