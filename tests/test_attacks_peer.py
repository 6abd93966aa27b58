"""Agreement with torchattacks (installed with `pip install --no-deps torchattacks`) and real-data behaviour."""

from __future__ import annotations

import pytest
import torch

from robustlr.attacks import FGSM, PGD, LoRaPGD, RankProjectedPGD
from robustlr.train.quick import accuracy

from conftest import require

torchattacks = require("torchattacks", "pip install --no-deps torchattacks (the Makefile does)")


@pytest.mark.parametrize("eps,alpha,steps", [(8 / 255, 2 / 255, 10), (0.1, 0.01, 7)])
def test_pgd_linf_matches_torchattacks(cnn, batch, eps, alpha, steps):
    x, y = batch
    ours = PGD(cnn, eps, "linf", steps=steps, alpha=alpha, random_start=False)(x, y)
    theirs = torchattacks.PGD(cnn, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("eps,steps", [(0.5, 10), (1.5, 5)])
def test_pgd_l2_matches_torchattacks(rgb_cnn, rgb_batch, eps, steps):
    x, y = rgb_batch
    alpha = 1.8 * eps / steps
    ours = PGD(rgb_cnn, eps, "l2", steps=steps, random_start=False)(x, y)
    assert PGD(rgb_cnn, eps, "l2", steps=steps).alpha == pytest.approx(alpha)
    theirs = torchattacks.PGDL2(rgb_cnn, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_fgsm_matches_torchattacks(cnn, batch):
    x, y = batch
    ours = FGSM(cnn, 0.1)(x, y)
    theirs = torchattacks.FGSM(cnn, eps=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_targeted_pgd_matches_torchattacks(cnn, batch):
    x, y = batch
    target = (y + 3) % 10
    ours = PGD(cnn, 0.1, steps=5, alpha=0.02, random_start=False)(x, target, targeted=True)
    peer = torchattacks.PGD(cnn, eps=0.1, alpha=0.02, steps=5, random_start=False)
    peer.set_mode_targeted_by_label(quiet=True)
    torch.testing.assert_close(ours, peer(x, target), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_fashion_mnist_robust_below_clean_and_falls_with_eps(fmnist, fmnist_model):
    _, test = fmnist
    x, y = test.images[:500], test.labels[:500]
    clean = accuracy(fmnist_model, x, y)
    assert clean > 0.7
    for make, grid in [
        (lambda e: PGD(fmnist_model, e, "linf", steps=10, seed=0), [0.01, 0.03, 0.1]),
        (lambda e: PGD(fmnist_model, e, "l2", steps=10, seed=0), [0.25, 0.5, 1.5]),
        (lambda e: LoRaPGD(fmnist_model, e, rank=0.2, steps=10, seed=0), [0.25, 0.5, 1.5]),
        (lambda e: LoRaPGD(fmnist_model, e, rank=0.2, norm="linf", steps=10, seed=0), [0.01, 0.03, 0.1]),
        (lambda e: RankProjectedPGD(fmnist_model, e, rank=0.2, steps=10), [0.25, 0.5, 1.5]),
        (lambda e: FGSM(fmnist_model, e), [0.01, 0.03, 0.1]),
    ]:
        accs = [accuracy(fmnist_model, make(e)(x, y), y) for e in grid]
        assert accs[0] < clean, (make(grid[0]), accs, clean)
        assert accs[0] >= accs[1] >= accs[2] and accs[2] < accs[0], (make(grid[0]), accs)
