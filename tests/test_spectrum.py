"""Spectral statistics against numpy on matrices with known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlr.analysis import (
    effective_rank,
    energy_curve,
    energy_fraction,
    nuclear_norm,
    relative_spectrum_shift,
    singular_values,
    stable_rank,
)


def with_spectrum(sigmas: list[float], n: int = 6, seed: int = 0) -> torch.Tensor:
    """A (1, 1, n, n) batch whose channel has exactly the singular values ``sigmas`` (padded with 0)."""
    rng = np.random.default_rng(seed)
    p, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.zeros(n)
    s[: len(sigmas)] = sigmas
    return torch.from_numpy(p @ np.diag(s) @ q.T)[None, None]


def test_singular_values_and_nuclear_norm():
    x = with_spectrum([3.0, 2.0, 1.0])
    np.testing.assert_allclose(singular_values(x)[0, 0].numpy(), [3, 2, 1, 0, 0, 0], atol=1e-12)
    assert float(nuclear_norm(x)) == pytest.approx(6.0)


def test_energy_fraction_matches_formula_and_eckart_young():
    x = with_spectrum([3.0, 2.0, 1.0])
    assert float(energy_fraction(x, 1)) == pytest.approx(9 / 14)
    assert float(energy_fraction(x, 2)) == pytest.approx(13 / 14)
    assert float(energy_fraction(x, 3)) == pytest.approx(1.0)
    np.testing.assert_allclose(energy_curve(x).numpy(), [9 / 14, 13 / 14, 1, 1, 1, 1])


def test_effective_and_stable_rank():
    flat = with_spectrum([2.0, 2.0, 2.0, 2.0])
    assert float(effective_rank(flat)) == pytest.approx(4.0)
    assert float(stable_rank(flat)) == pytest.approx(4.0)
    one = with_spectrum([5.0])
    assert float(effective_rank(one)) == pytest.approx(1.0)
    assert float(stable_rank(one)) == pytest.approx(1.0)
    x = with_spectrum([3.0, 1.0])
    q = np.array([0.75, 0.25])
    assert float(effective_rank(x)) == pytest.approx(math.exp(-(q * np.log(q)).sum()))
    assert float(stable_rank(x)) == pytest.approx(10 / 9)


def test_zero_channel_is_nan_not_silent():
    z = torch.zeros(1, 1, 4, 4)
    assert math.isnan(float(energy_fraction(z, 1)))
    assert math.isnan(float(effective_rank(z)))
    assert math.isnan(float(stable_rank(z)))


def test_relative_shift_formula_and_zero_guard():
    x = with_spectrum([4.0, 2.0, 1.0, 0.5, 0.25, 0.125], seed=1)
    x_adv = with_spectrum([4.4, 2.0, 1.5, 0.5, 0.25, 0.125], seed=1)  # same bases, shifted σ₁ and σ₃
    a, p = relative_spectrum_shift(x, x_adv)
    np.testing.assert_allclose(a.numpy(), [0.1, 0, 0.5, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(p.numpy(), [1 / 6, 0, 5 / 6, 0, 0, 0], atol=1e-9)
    # a rank-deficient clean image: σ_j = 0 terms are skipped, never inf/NaN when others exist
    low = with_spectrum([1.0, 0.5], seed=2)
    a, p = relative_spectrum_shift(torch.cat([low, x]), torch.cat([low + 0.01, x_adv]))
    assert torch.isfinite(a).all() and torch.isfinite(p).all()
    assert float(p.sum()) == pytest.approx(1.0)


def test_shapes_and_bad_input():
    x = torch.rand(3, 2, 5, 7)
    assert singular_values(x).shape == (3, 2, 5)
    assert energy_fraction(x, 0.4).shape == (3, 2)
    with pytest.raises(ValueError, match="4-D"):
        singular_values(torch.rand(5, 7))
    with pytest.raises(ValueError, match="rank"):
        energy_fraction(x, 6)
    with pytest.raises(ValueError, match="x_adv"):
        relative_spectrum_shift(x, x[:1])
