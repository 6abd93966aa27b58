"""LoRa-PGD's steps against the module docstring's math written with plain autograd: the hand-written backward
pass of the L2 step (and the L∞ step's) must give the same factors, on real Fashion-MNIST images, whose many
exact zeros put entries of x + δ̂ on the clip's boundary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import small_cnn
from robustlr.attacks import LoRaPGD
from robustlr.attacks.projections import TINY


def _reference_factors(model, x, y, eps, norm, u, v, steps, targeted=False):
    """``steps`` updates ``U ← U + G_U/‖G_U‖``, ``V ← V + G_V/‖G_V‖`` with the gradients of the summed
    cross-entropy at ``clip_[0,1](x + ε·UV/s)`` by autograd (``s``: ‖UV‖_F per sample, or max |UV| per
    channel), in float64."""
    x, u, v = x.double(), u.double(), v.double()
    model = model.double()
    for _ in range(steps):
        u.requires_grad_(True)
        v.requires_grad_(True)
        d = u @ v
        scale = (d.flatten(1).norm(dim=1)[:, None, None, None] if norm == "l2"
                 else d.abs().amax(dim=(2, 3), keepdim=True))
        loss = F.cross_entropy(model((x + eps * d / (scale + TINY)).clamp(0, 1)), y, reduction="sum")
        g_u, g_v = torch.autograd.grad(-loss if targeted else loss, [u, v])
        unit = lambda g: g / (g.flatten(1).norm(dim=1)[:, None, None, None] + TINY)
        u, v = (u + unit(g_u)).detach(), (v + unit(g_v)).detach()
    return u, v


@pytest.fixture(scope="module")
def images(fmnist):
    _, test = fmnist
    x = test.images[:12]
    assert float((x == 0).float().mean()) > 0.3  # the clip's boundary is exercised
    return x, test.labels[:12]


@pytest.mark.parametrize("norm,eps,init,rank", [("l2", 1.5, "lora", 3), ("l2", 1.5, "svd", 3), ("l2", 1.5, "lora", 6),
                                                ("linf", 0.1, "lora", 3), ("linf", 0.1, "svd", 3)])
@pytest.mark.parametrize("targeted", [False, True])
def test_factors_equal_the_autograd_reference(images, norm, eps, init, rank, targeted):
    """Ranks 3 and 6: the two ways of the small Gram products (broadcast multiply-adds up to rank 4, bmm above)."""
    x, y = images
    model = small_cnn(seed=3)
    atk = LoRaPGD(model, eps, rank=rank, norm=norm, steps=4, init=init, seed=0)
    u0, v0 = atk.factors(x, y, targeted, steps=0)
    ours = atk.factors(x, y, targeted, steps=4)
    reference = _reference_factors(small_cnn(seed=3), x, y, eps, norm, u0, v0, 4, targeted)
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_step_from_v_zero_passes_the_gradient_at_the_clip_boundary(images):
    """At the ``"lora"`` start ``V = 0``, so ``x + δ̂ = x``: the entries at exactly 0 and 1 lie on the box's
    boundary, where autograd's clamp passes the gradient; the first ``V`` is ``Uᵀ M / ‖Uᵀ M‖`` with ``M`` the
    loss gradient at ``x`` on every entry."""
    x, y = images
    model = small_cnn(seed=3)
    atk = LoRaPGD(model, 1.0, rank=2, steps=1, seed=5)
    u0, _ = atk.factors(x, y, steps=0)
    _, v1 = atk.factors(x, y, steps=1)
    x0 = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    expected = u0.mT @ grad
    expected = expected / expected.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(v1, expected, rtol=1e-5, atol=1e-6)
