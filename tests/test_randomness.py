"""Device-side randomness (robustlr.attacks.randomness): batch independence, determinism, distributions,
separation of streams, no global RNG, and the int64 wraparound the hash relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlr.attacks.randomness import KINDS, Noise, mix64, mix64_int, sample_keys, stream

SHAPE = (3, 8, 8)


def _batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _draw(x: torch.Tensor, kind: str = "normal", seed: int = 0, restart: int = 0, purpose: str = "start",
          shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return Noise(sample_keys(x), seed).draw(kind, shape, restart, purpose)


def _ks_statistic(samples: np.ndarray, cdf) -> float:
    """Kolmogorov–Smirnov statistic D = sup |F_n − F| of a sample against a continuous CDF."""
    s = np.sort(samples.astype(np.float64))
    f = cdf(s)
    n = len(s)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def _normal_cdf(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_one_equals_batch_of_many_and_order_does_not_matter(kind):
    x = _batch()
    whole = _draw(x, kind)
    alone = torch.cat([_draw(x[i : i + 1], kind) for i in range(len(x))])
    assert torch.equal(whole, alone)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(_draw(x[perm], kind), whole[perm])
    bigger = torch.cat([_batch(4, seed=9), x])
    assert torch.equal(_draw(bigger, kind)[4:], whole)


def test_keys_depend_on_values_and_positions_not_on_layout():
    x = _batch()
    keys = sample_keys(x)
    assert keys.dtype == torch.int64 and keys.shape == (6,) and len(set(keys.tolist())) == 6
    assert torch.equal(sample_keys(x.contiguous(memory_format=torch.channels_last)), keys)
    moved = x.clone()
    moved[0, 0, 0, 0], moved[0, 0, 0, 1] = x[0, 0, 0, 1], x[0, 0, 0, 0]  # same values, two swapped
    assert sample_keys(moved)[0] != keys[0]
    nudged = x.clone()
    nudged[1, 2, 7, 7] = torch.nextafter(x[1, 2, 7, 7], torch.tensor(2.0))  # one ulp
    assert sample_keys(nudged)[1] != keys[1]
    assert torch.equal(sample_keys(x.double()), keys)  # keys read float32 values


@pytest.mark.parametrize("kind,mean,var,cdf", [
    ("unit", 0.5, 1 / 12, lambda v: np.clip(v, 0, 1)),
    ("uniform", 0.0, 1 / 3, lambda v: np.clip((v + 1) / 2, 0, 1)),
    ("normal", 0.0, 1.0, _normal_cdf),
])
def test_moments_and_kolmogorov_smirnov(kind, mean, var, cdf):
    x = _batch(64)
    draws = _draw(x, kind, shape=(3, 16, 16))
    assert draws.dtype == torch.float32
    flat = draws.flatten().double()
    n = flat.numel()  # 49152
    assert abs(float(flat.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(flat.var()) - var) < 0.02 * var
    if kind == "normal":
        assert abs(float(((flat - mean) ** 4).mean()) - 3.0) < 0.1  # kurtosis of a Gaussian
        assert float(flat.abs().max()) < math.sqrt(-2 * math.log(2.0**-24)) + 1e-4  # Box–Muller's 24-bit tail
    else:
        lo = 0.0 if kind == "unit" else -1.0
        assert float(flat.min()) >= lo and float(flat.max()) < 1.0
    sample = flat[::7].numpy()  # one KS test on 7022 draws: critical value at α = 0.001 is 1.95/√n
    assert _ks_statistic(sample, cdf) < 1.95 / math.sqrt(len(sample))
    # samples are not correlated with each other: per-sample means are independent draws of the mean
    per_sample = draws.flatten(1).double().mean(dim=1)
    assert float(per_sample.std()) < 2 * math.sqrt(var / 768)


def test_streams_separate_seeds_restarts_purposes_and_samples():
    x = _batch()
    base = _draw(x)
    for other in (_draw(x, seed=1), _draw(x, restart=1), _draw(x, purpose="init"), _draw(x, "uniform")):
        assert not torch.isclose(base, other).any(dim=(1, 2, 3)).all()  # every sample differs
        corr = float(torch.corrcoef(torch.stack([base.flatten(), other.flatten()]))[0, 1])
        assert abs(corr) < 0.1
    same_image_twice = torch.stack([x[0], x[0]])
    twins = _draw(same_image_twice)
    assert torch.equal(twins[0], twins[1]) and torch.equal(twins[0], base[0])  # a pure function of the image
    assert not torch.equal(base[0], base[1])
    assert stream(0, 0, "start") != stream(0, 1, "start") != stream(1, 0, "start")
    assert stream(-(2**127), 0, "start") != stream(2**127 - 1, 0, "start")


def test_deterministic_and_global_rng_untouched():
    x = _batch()
    state = torch.random.get_rng_state()
    first = [_draw(x, kind) for kind in KINDS]
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    assert all(torch.equal(a, _draw(x, kind)) for a, kind in zip(first, KINDS))


def test_channels_last_draws_equal_contiguous_ones():
    keys = sample_keys(_batch())
    noise = Noise(keys, 5)
    plain = noise.draw("normal", SHAPE, 0, "start")
    last = noise.draw("normal", SHAPE, 0, "start", torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert torch.equal(last, plain)


def test_int64_wraparound_matches_the_modular_reference():
    """torch's CPU int64 ``+``/``*`` wrap modulo 2⁶⁴ (two's complement), as CUDA's 64-bit integer units do;
    the hash is checked against unbounded Python integers reduced modulo 2⁶⁴ at the extremes."""
    words = [0, 1, -1, 2**63 - 1, -(2**63), 0x9E3779B97F4A7C15 - 2**64, 123456789012345678]
    ours = mix64(torch.tensor(words, dtype=torch.int64)).tolist()
    assert ours == [mix64_int(w) for w in words]
    big = torch.tensor([2**62, -(2**63)], dtype=torch.int64)
    assert (big * 4).tolist() == [0, 0] and (big + big).tolist() == [-(2**63), 0]


def test_bad_arguments():
    keys = sample_keys(_batch())
    with pytest.raises(ValueError, match="kind must be one of"):
        Noise(keys, 0).draw("cauchy", SHAPE, 0, "start")
    with pytest.raises(ValueError, match="keys must be a 1-D int64 tensor"):
        Noise(keys.float(), 0)


def _signed32(word: int) -> int:
    word &= (1 << 32) - 1
    return word - (1 << 32) if word >> 31 else word


def _reference_draw(keys: list[int], kind: str, shape: tuple[int, ...], seed: int, restart: int,
                    purpose: str) -> np.ndarray:
    """The module docstring's formulas on Python integers (float64 arithmetic), sample by sample."""
    m = math.prod(shape)
    h = (m + 1) // 2
    phi = 0x9E3779B97F4A7C15
    s = stream(seed, restart, f"{kind}/{purpose}")
    rows = []
    for key in keys:
        base = mix64_int(key + s)
        words = [mix64_int(base + (k + 1) * phi) for k in range(h)]
        a = [_signed32(w) >> 8 for w in words]  # bits 8–31 (Python's >> floors, as an arithmetic shift)
        b = [_signed32(w >> 32) >> 8 for w in words]  # bits 40–63
        if kind == "normal":
            rho = [math.sqrt(-2 * math.log(0.5 - bk * 2.0**-24)) for bk in b]
            theta = [2 * math.pi * ak * 2.0**-24 for ak in a]
            values = [r * math.cos(t) for r, t in zip(rho, theta)] + [r * math.sin(t) for r, t in zip(rho, theta)]
        else:
            fields = [f for pair in zip(a, b) for f in pair]
            values = [f * 2.0**-24 + 0.5 if kind == "unit" else f * 2.0**-23 for f in fields]
        rows.append(values[:m])
    return np.array(rows).reshape(len(keys), *shape)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 3), (1,)])  # even, odd and one entry
def test_draws_follow_the_documented_formulas(kind, shape):
    """Two entries per word: the uniforms of both 24-bit fields, Box–Muller's cosine and sine of one pair."""
    x = _batch(3)
    draws = Noise(sample_keys(x), 11).draw(kind, shape, 2, "start")
    assert draws.dtype == torch.float32 and draws.shape == (3, *shape)
    expected = _reference_draw(sample_keys(x).tolist(), kind, shape, 11, 2, "start")
    if kind == "normal":  # float32 log, sqrt, cos and sin: a few ulps of values below 5.8
        np.testing.assert_allclose(draws.double().numpy(), expected, rtol=0, atol=4e-6)
    else:  # 24-bit fields scaled by powers of two: exact in float32
        np.testing.assert_array_equal(draws.double().numpy(), expected)


def test_draws_are_float32_whatever_the_default_dtype():
    keys = sample_keys(_batch())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        draws = {kind: Noise(keys, 0).draw(kind, SHAPE, 0, "start") for kind in KINDS}
    finally:
        torch.set_default_dtype(previous)
    assert all(d.dtype == torch.float32 for d in draws.values())
    assert all(torch.equal(d, _draw(_batch(), kind)) for kind, d in draws.items())
