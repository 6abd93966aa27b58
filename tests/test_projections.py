"""Properties of the projections module (hypothesis-driven), checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustlr.attacks.projections import (
    check_rank_spec,
    fit_budget,
    normalize_per_sample,
    per_sample_norm,
    project_ball,
    resolve_rank,
    truncate_rank,
)

finite = st.floats(-10, 10, allow_nan=False, width=32)
batches = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(2, 6), st.integers(2, 6)), elements=finite)
eps_values = st.floats(0.0, 5.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(batches, eps_values, st.sampled_from(["linf", "l2"]))
def test_project_ball_lands_in_ball_and_is_idempotent(arr, eps, norm):
    d = torch.from_numpy(arr)
    p = project_ball(d, eps, norm)
    assert bool((per_sample_norm(p, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    torch.testing.assert_close(project_ball(p, eps, norm), p, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(batches, st.sampled_from(["linf", "l2"]))
def test_project_ball_leaves_inside_points_unchanged(arr, norm):
    d = torch.from_numpy(arr)
    eps = float(per_sample_norm(d, norm).max()) + 1.0
    torch.testing.assert_close(project_ball(d, eps, norm), d)


unit_batches = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(2, 5), st.integers(2, 5)),
                      elements=st.floats(0, 1, width=32))
low_eps = st.one_of(st.floats(1e-6, 2.0, allow_nan=False), st.sampled_from([0.1, 1 / 255, 8 / 255, 0.3]))


@settings(max_examples=80, deadline=None)
@given(unit_batches, batches, low_eps, st.sampled_from(["linf", "l2"]),
       st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_fit_budget_holds_exactly_in_the_output_dtype(clean, noise, eps, norm, dtype):
    """Whatever x (a value of dtype in [0, 1]) and δ: x_adv has dtype, lies in [0, 1] and within ε of x,
    measured in float64."""
    n = min(clean.shape[0], noise.shape[0])
    shape = tuple(min(a, b) for a, b in zip(clean.shape[1:], noise.shape[1:]))
    x = torch.from_numpy(clean[:n, : shape[0], : shape[1], : shape[2]].copy()).to(dtype).float()
    delta = torch.from_numpy(noise[:n, : shape[0], : shape[1], : shape[2]].copy()) * eps
    x_adv = fit_budget(delta, x, eps, norm, dtype)
    assert x_adv.dtype == dtype
    wide = x_adv.double()
    assert float(wide.min()) >= 0 and float(wide.max()) <= 1
    assert bool((per_sample_norm(wide - x.double(), norm) <= eps).all())


def test_fit_budget_refuses_mismatched_tensors():
    with pytest.raises(ValueError, match="same shape and dtype"):
        fit_budget(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.float64), 0.1, "linf", torch.float32)


@settings(max_examples=40, deadline=None)
@given(batches)
def test_per_sample_norms_match_numpy(arr):
    d = torch.from_numpy(arr)
    flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
    np.testing.assert_allclose(per_sample_norm(d, "l2").numpy(), np.linalg.norm(flat, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_sample_norm(d, "linf").numpy(), np.abs(flat).max(axis=1), rtol=1e-6)
    nuc = np.array([[np.linalg.norm(m.astype(np.float64), "nuc") for m in img] for img in arr]).sum(axis=1)
    np.testing.assert_allclose(per_sample_norm(d, "nuc").numpy(), nuc, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(batches, st.integers(1, 6))
def test_truncate_rank_is_eckart_young(arr, r):
    d = torch.from_numpy(arr).double()
    low = truncate_rank(d, r)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            s = np.linalg.svd(arr[b, c].astype(np.float64), compute_uv=False)
            assert np.linalg.matrix_rank(low[b, c].numpy(), tol=1e-8 * max(s[0], 1)) <= r
            err = np.linalg.norm(arr[b, c] - low[b, c].numpy())
            np.testing.assert_allclose(err, np.sqrt((s[r:] ** 2).sum()), rtol=1e-6, atol=1e-6)


def test_normalize_zero_sample_gives_zero_not_nan():
    d = torch.zeros(2, 1, 3, 3)
    d[1] = 2.0
    out = normalize_per_sample(d, "l2")
    assert torch.isfinite(out).all()
    assert float(out[0].abs().sum()) == 0.0
    assert abs(float(out[1].norm()) - 1.0) < 1e-6


@pytest.mark.parametrize("rank,full,expected", [(3, 28, 3), (0.1, 32, 3), (0.2, 32, 6), (0.5, 224, 112), (0.01, 10, 1), (1.0, 28, 28)])
def test_resolve_rank(rank, full, expected):
    assert resolve_rank(rank, full) == expected


@pytest.mark.parametrize("rank,full,expected", [(np.int64(3), 28, 3), (np.float32(0.1), 32, 3), (np.float64(0.5), 224, 112)])
def test_resolve_rank_takes_numpy_numbers(rank, full, expected):
    assert resolve_rank(rank, full) == expected
    assert check_rank_spec(rank) == (int(rank) if isinstance(rank, np.integer) else float(rank))


@pytest.mark.parametrize("rank", [0, -1, 29, 1.5, 0.0, float("nan"), True, np.bool_(True), "3", None])
def test_resolve_rank_rejects(rank):
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(rank, 28)


@pytest.mark.parametrize("rank", [0, -2, 1.01, 0.0, True, "a"])
def test_check_rank_spec_rejects(rank):
    with pytest.raises(ValueError, match="rank"):
        check_rank_spec(rank)


def test_unknown_norm_rejected():
    with pytest.raises(ValueError, match="norm"):
        per_sample_norm(torch.zeros(1, 1, 2, 2), "l1")
