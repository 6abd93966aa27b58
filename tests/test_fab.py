"""FAB (robustlr.attacks.fab) and the hyperplane ∩ box projections it rests on: the projections against
independent solvers (scipy's linprog and SLSQP) and pyautoattack's; the attack's budget, box, batch
independence, seeds, host round trips, resistance to a saturated softmax, and its robust accuracy against
pyautoattack's FABAttack_PT on real Fashion-MNIST."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from robustlr.attacks import PGD
from robustlr.attacks.fab import FAB
from robustlr.attacks.projections import hyperplane_box_step, hyperplane_distance, per_sample_norm
from robustlr.profiling import HostSyncs
from robustlr.train.quick import accuracy

from conftest import require

NORMS = ["linf", "l2"]
EPS = {"linf": 0.05, "l2": 1.0}
"""Budgets at which FAB-T leaves the conftest's Fashion-MNIST CNN some but not all of its accuracy."""


# ---------------------------------------------------------------------------- problems


def _problems(count: int, dim: int, seed: int, feasible: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random points in [0, 1]^dim (some entries on the faces), normals with some zero entries, and offsets
    of hyperplanes that cut the box (``feasible``) or miss it."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(count, dim, generator=gen, dtype=torch.float64)
    t = torch.where(t < 0.15, 0.0, torch.where(t > 0.9, 1.0, t))
    w = torch.randn(count, dim, generator=gen, dtype=torch.float64)
    w = torch.where(torch.rand(count, dim, generator=gen) < 0.2, 0.0, w)
    w[:, 0] = w[:, 0].where(w[:, 0] != 0, 1.0)  # at least one non-zero entry
    low, high = torch.minimum(w, torch.zeros_like(w)).sum(1), torch.maximum(w, torch.zeros_like(w)).sum(1)
    u = torch.rand(count, generator=gen, dtype=torch.float64)
    b = low + u * (high - low) if feasible else torch.where(u < 0.5, low - 0.1 - u, high + u)
    return t, w, b


def _lp_linf(t: np.ndarray, w: np.ndarray, b: float) -> float:
    """min λ s.t. ⟨w, t + d⟩ = b, |d_i| ≤ λ, 0 ≤ t + d ≤ 1 (variables d, λ), by scipy's HiGHS."""
    dim = len(t)
    cost = np.r_[np.zeros(dim), 1.0]
    eye = np.eye(dim)
    a_ub = np.block([[eye, -np.ones((dim, 1))], [-eye, -np.ones((dim, 1))]])
    bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ t],
                  bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def _qp_l2(t: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """argmin ‖d‖₂ s.t. ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1, by scipy's SLSQP."""
    res = minimize(lambda d: d @ d, np.zeros(len(t)), jac=lambda d: 2 * d, method="SLSQP",
                   bounds=[(-ti, 1 - ti) for ti in t],
                   constraints=[{"type": "eq", "fun": lambda d: w @ (t + d) - b, "jac": lambda d: w}],
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success, res.message
    return res.x


# ---------------------------------------------------------------------------- projections


def test_linf_step_is_the_linear_programme_optimum():
    t, w, b = _problems(40, 6, seed=0, feasible=True)
    step = hyperplane_box_step(t, w, b, "linf")
    z = t + step
    torch.testing.assert_close((w * z).sum(1), b, rtol=0, atol=1e-10)
    assert bool(((z >= 0) & (z <= 1)).all())
    assert bool((step[w == 0] == 0).all())
    optimum = torch.tensor([_lp_linf(*(a.numpy() for a in (t[i], w[i])), float(b[i])) for i in range(len(t))],
                           dtype=torch.float64)
    torch.testing.assert_close(per_sample_norm(step, "linf"), optimum, rtol=0, atol=1e-8)


def test_l2_step_is_the_quadratic_programme_optimum():
    t, w, b = _problems(40, 6, seed=1, feasible=True)
    step = hyperplane_box_step(t, w, b, "l2")
    optimum = torch.tensor(np.stack([_qp_l2(t[i].numpy(), w[i].numpy(), float(b[i])) for i in range(len(t))]))
    torch.testing.assert_close(step, optimum, rtol=0, atol=1e-6)
    torch.testing.assert_close((w * (t + step)).sum(1), b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("norm", NORMS)
def test_step_to_an_unreachable_plane_ends_at_the_nearest_box_corner(norm):
    """The box point nearest the plane in ⟨w, ·⟩ is the corner (1 where w pushes towards b, else 0);
    coordinates with w_i = 0 stay."""
    t, w, b = _problems(30, 5, seed=2, feasible=False)
    z = t + hyperplane_box_step(t, w, b, norm)
    up = (w > 0) == (b > (w * t).sum(1))[:, None]
    corner = torch.where(w == 0, t, up.to(t.dtype))
    torch.testing.assert_close(z, corner, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_step_is_invariant_to_the_scale_of_the_plane(norm):
    t, w, b = _problems(30, 50, seed=3, feasible=True)
    t, w, b = t.float(), w.float(), b.float()
    step = hyperplane_box_step(t, w, b, norm)
    for factor in (1e-8, 1e4):
        torch.testing.assert_close(hyperplane_box_step(t, w * factor, b * factor, norm), step, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_step_matches_pyautoattack_projections(norm):
    projections = require("pyautoattack.fab_projections", "pip install --no-deps pyautoattack (the Makefile does)")
    peer = projections.projection_linf if norm == "linf" else projections.projection_l2
    t, w, b = (a.float() for a in _problems(64, 784, seed=4, feasible=True))
    torch.testing.assert_close(hyperplane_box_step(t, w, b, norm), peer(t, w, b), rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_hyperplane_distance_is_the_unboxed_step_length(norm):
    """From the box's centre to a plane that cuts close by, the box does not bind: the step's length is the
    distance |g| / ‖w‖_*; a zero normal is at distance 0 or inf."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(20, 3, 4, 4, generator=gen, dtype=torch.float64)
    x = torch.full_like(w, 0.5)
    gap = 0.01 * torch.randn(20, generator=gen, dtype=torch.float64)
    step = hyperplane_box_step(x, w, (w * x).sum((1, 2, 3)) - gap, norm)
    torch.testing.assert_close(hyperplane_distance(gap, w, norm), per_sample_norm(step, norm))
    zero = torch.zeros(2, 3)
    assert hyperplane_distance(torch.tensor([0.0, 1.0]), zero, norm).tolist() == [0.0, float("inf")]


@pytest.mark.parametrize("call,match", [
    (lambda: hyperplane_box_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2), "l1"), "norm must be one of"),
    (lambda: hyperplane_box_step(torch.rand(2, 3), torch.rand(2, 4), torch.rand(2), "l2"), r"w must have the shape of points \(2, 3\)"),
    (lambda: hyperplane_box_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(3), "l2"), r"b must have shape \(2,\)"),
    (lambda: hyperplane_box_step(torch.ones(2, 3, dtype=torch.long), torch.rand(2, 3), torch.rand(2), "l2"), "points must be a floating tensor"),
    (lambda: hyperplane_distance(torch.rand(3), torch.rand(2, 3), "l2"), r"gap must have shape \(2,\)"),
])
def test_projection_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------- the attack


@pytest.fixture(scope="module")
def points(fmnist):
    _, test = fmnist
    return test.images[:200], test.labels[:200]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("targeted", [True, False])
def test_budget_box_and_result_convention(fmnist_model, points, norm, dtype, targeted):
    """‖x_adv − x‖ ≤ ε, x_adv ∈ [0, 1], dtype kept; a changed image fools the model, an unchanged one is x."""
    model = copy.deepcopy(fmnist_model).to(dtype)
    x, y = points[0][:24].to(dtype), points[1][:24]
    x_adv = FAB(model, EPS[norm], norm, steps=5, targeted=targeted, n_target_classes=3, seed=0)(x, y)
    assert x_adv.dtype == dtype
    assert bool((x_adv >= 0).all() and (x_adv <= 1).all())
    assert bool((per_sample_norm((x_adv - x).double(), norm) <= EPS[norm]).all())
    changed = (x_adv != x).flatten(1).any(1)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert bool(fooled[changed].all()) and 0 < int(changed.sum()) < len(x)


@pytest.mark.parametrize("norm", NORMS)
def test_batch_of_one_equals_batch_of_many(fmnist_model, points, norm):
    x, y = points[0][:6], points[1][:6]
    atk = FAB(fmnist_model, EPS[norm], norm, steps=5, n_target_classes=2, restarts=2, seed=3)
    alone = torch.cat([atk(x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(atk(x, y), alone, rtol=1e-5, atol=1e-5)


def test_same_seed_same_output_and_global_rng_untouched(fmnist_model, points):
    x, y = points[0][:16], points[1][:16]
    state = torch.random.get_rng_state()
    first = FAB(fmnist_model, 0.5, "l2", steps=4, n_target_classes=2, restarts=3, seed=7)(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(FAB(fmnist_model, 0.5, "l2", steps=4, n_target_classes=2, restarts=3, seed=7)(x, y), first)


def test_random_restarts_only_add_broken_points(fmnist_model, points):
    """Restart 0 is the run of restarts=1 (from the clean image): more restarts can only break more."""
    x, y = points[0][:40], points[1][:40]
    with torch.no_grad():
        one, three = (fmnist_model(FAB(fmnist_model, 0.03, "linf", steps=5, n_target_classes=2, restarts=r,
                                       seed=1)(x, y)).argmax(1) != y for r in (1, 3))
    assert bool((three | ~one).all()) and int(three.sum()) >= int(one.sum())


def test_fewer_classes_than_targets_uses_all_others():
    """A 3-class model has 2 other classes: n_target_classes=9 attacks those two, as n_target_classes=2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    with HostSyncs() as syncs:
        x_adv = FAB(model, 0.5, "l2", steps=10, n_target_classes=9)(x, y)
    assert syncs.total <= 1 + 2  # the input check, then at most two targets
    assert torch.equal(x_adv, FAB(model, 0.5, "l2", steps=10, n_target_classes=2)(x, y))
    with torch.no_grad():
        assert 0 < int((model(x_adv).argmax(1) != y).sum()) < len(x)


@pytest.mark.parametrize("targeted,runs", [(True, 3), (False, 1)])
def test_host_round_trips_do_not_grow_with_steps(targeted, runs):
    """Budget: the input check (one .tolist()) and one read per target and restart of how many points are
    left; here no point breaks (ε tiny, labels = predictions), so every target runs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    counts = []
    for steps in (10, 100):
        with HostSyncs() as syncs:
            x_adv = FAB(model, 1e-5, "linf", steps=steps, targeted=targeted, n_target_classes=3, restarts=2,
                        seed=0)(x, y)
        counts.append(dict(syncs.events))
        assert torch.equal(x_adv, x)
    expected = {"copy to host: Tensor.tolist": 1, "scalar read: aten._local_scalar_dense": 2 * runs}
    assert counts == [expected, expected]


class _Saturated(nn.Module):
    """``z = 10⁴ · f(x)``: the same decisions, but a softmax saturated to one-hot in float32, so the
    cross-entropy's gradient is exactly 0 wherever the clean margin exceeds ~0.01."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * self.model(x)


@pytest.mark.parametrize("norm", NORMS)
def test_fab_breaks_a_saturated_softmax_that_stops_pgd(fmnist_model, points, norm):
    x, y = points[0][:100], points[1][:100]
    masked = _Saturated(fmnist_model)
    clean = accuracy(masked, x, y)
    pgd = accuracy(masked, PGD(masked, EPS[norm], norm, steps=10, seed=0)(x, y), y)
    fab = accuracy(masked, FAB(masked, EPS[norm], norm, steps=10, seed=0)(x, y), y)
    plain = accuracy(fmnist_model, FAB(fmnist_model, EPS[norm], norm, steps=10, seed=0)(x, y), y)
    assert pgd >= clean - 0.02, (clean, pgd)
    assert fab <= clean / 2 and abs(fab - plain) <= 0.01, (clean, fab, plain)


@pytest.mark.parametrize("norm", NORMS)
def test_robust_accuracy_matches_pyautoattack_fab_t(fmnist_model, points, norm):
    """FAB-T on the same 200 real images, same steps, one restart: robust accuracy within 1 point.

    Restart 0 draws nothing on either side, so the two run the same deterministic algorithm; they differ
    in floating point only (the projections are computed differently: a sort and prefix sums here, a
    bisection there, which also zeroes L2 normal entries below 1e-8), and a point within rounding of the
    boundary may fall either way.
    """
    fab_pt = require("pyautoattack.fab_pt", "pip install --no-deps pyautoattack (the Makefile does)")
    x, y = points
    steps = 10
    ours = FAB(fmnist_model, EPS[norm], norm, steps=steps, n_target_classes=9, restarts=1, seed=0)(x, y)
    peer = fab_pt.FABAttack_PT(fmnist_model, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=steps,
                               eps=EPS[norm], seed=0, targeted=True, n_target_classes=9)
    with torch.random.fork_rng():  # the peer seeds the global RNG
        theirs = peer.perturb(x, y)
    with torch.no_grad():
        robust_ours, robust_theirs = (fmnist_model(adv).argmax(1) == y for adv in (ours, theirs))
    ours_acc, theirs_acc = robust_ours.double().mean().item(), robust_theirs.double().mean().item()
    assert 0.05 < theirs_acc < accuracy(fmnist_model, x, y) - 0.2, theirs_acc  # a test that can fail
    assert abs(ours_acc - theirs_acc) <= 0.01, (ours_acc, theirs_acc)
    assert int((robust_ours != robust_theirs).sum()) <= 2  # and the same points, but for two


def test_untargeted_robust_accuracy_matches_pyautoattack_fab(fmnist_model, points):
    """Untargeted FAB (the nearest linearised boundary at every step), one restart, L2, 100 real images: the
    same robust accuracy as FABAttack_PT within 1 point, for the reason above."""
    fab_pt = require("pyautoattack.fab_pt", "pip install --no-deps pyautoattack (the Makefile does)")
    x, y = points[0][:100], points[1][:100]
    ours = FAB(fmnist_model, EPS["l2"], "l2", steps=5, targeted=False, seed=0)(x, y)
    peer = fab_pt.FABAttack_PT(fmnist_model, norm="L2", n_restarts=1, n_iter=5, eps=EPS["l2"], seed=0)
    with torch.random.fork_rng():
        theirs = peer.perturb(x, y)
    robust_ours, robust_theirs = accuracy(fmnist_model, ours, y), accuracy(fmnist_model, theirs, y)
    assert 0.05 < robust_theirs < accuracy(fmnist_model, x, y) - 0.2, robust_theirs
    assert abs(robust_ours - robust_theirs) <= 0.01, (robust_ours, robust_theirs)


def test_targeted_call_is_refused_with_the_reason(cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match="targeted must be False in a FAB call.*chooses its target classes itself"):
        FAB(cnn, 0.1)(x, y, targeted=True)


def test_eps_zero_returns_input_and_repr(cnn, batch):
    x, y = batch
    assert torch.equal(FAB(cnn, 0.0)(x, y), x)
    text = repr(FAB(cnn, 0.1, "l2", steps=7, seed=1))
    assert "steps=7" in text and "targeted=True" in text and "n_target_classes=9" in text and "loss=" not in text


def test_labels_beyond_the_logits_are_refused(cnn, batch):
    x, _ = batch
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 9\].*got max 12"):
        FAB(cnn, 0.1, steps=1)(x, torch.full((len(x),), 12))


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps must be a finite number >= 0; got -0.1"),
    ({"norm": "l1"}, "norm must be one of"),
    ({"steps": 0}, "steps must be an integer >= 1; got 0"),
    ({"targeted": "yes"}, "targeted must be True .* or False .*, got 'yes'"),
    ({"n_target_classes": 0}, "n_target_classes must be an integer >= 1; got 0"),
    ({"restarts": 0}, "restarts must be an integer >= 1; got 0"),
    ({"alpha_max": 0.0}, "alpha_max must be a finite number > 0; got 0.0"),
    ({"alpha_max": 1.5}, r"alpha_max must be in \(0, 1\] .*got 1.5"),
    ({"eta": 0.5}, "eta must be a finite number >= 1; got 0.5"),
    ({"beta": 1.0}, r"beta must be in \(0, 1\) .*got 1.0"),
    ({"beta": 0.0}, "beta must be a finite number > 0; got 0.0"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_arguments(cnn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAB(cnn, **{"eps": 0.1, **kwargs})
