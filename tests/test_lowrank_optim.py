"""Manifold operations, the CondLR optimiser (fixed and adaptive rank) and the QR-projected SGD baseline."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustlr.lowrank import (
    CondLR,
    LowRankConv2d,
    LowRankLinear,
    QRProjectedSGD,
    condition_projection,
    qr_retraction,
    tangent_projection,
    to_lowrank,
)
from robustlr.lowrank.adaptive import truncation_rank
from robustlr.lowrank.manifold import svd

TOL = 1e-5


@pytest.fixture(autouse=True)
def _single_thread():
    """These problems are tiny: one thread avoids OpenMP oversubscription on shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kappa(s: torch.Tensor) -> float:
    sigma = torch.linalg.svdvals(s.detach().double())
    return float(sigma[0] / sigma[-1])


def orthonormality_error(basis: torch.Tensor) -> float:
    basis = basis.detach().double()
    return float((basis.T @ basis - torch.eye(basis.shape[1], dtype=basis.dtype)).abs().max())


def random_matrix(r: int, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    p = torch.linalg.qr(torch.randn(r, r, generator=generator, dtype=torch.float64))[0]
    q = torch.linalg.qr(torch.randn(r, r, generator=generator, dtype=torch.float64))[0]
    return p @ torch.diag(sigma) @ q.T


# ---------------------------------------------------------------------------------------------- manifold


def test_qr_retraction_is_sign_fixed_batched_and_idempotent() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    q = qr_retraction(x)
    torch.testing.assert_close(q.mT @ q, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    r = q.mT @ x
    torch.testing.assert_close(r, torch.triu(r))
    assert (torch.diagonal(r, dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(qr_retraction(q), q)
    assert qr_retraction(torch.randn(4, 6)).shape == (4, 4)
    assert qr_retraction(torch.randn(6, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_tangent_projection_removes_the_span() -> None:
    torch.manual_seed(1)
    u = qr_retraction(torch.randn(8, 3, dtype=torch.float64))
    g = torch.randn(8, 3, dtype=torch.float64)
    d = tangent_projection(u, g)
    torch.testing.assert_close(u.T @ d, torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(tangent_projection(u, d), d)


def test_svd_falls_back_when_lapack_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """gesdd can fail on the clustered spectra the clamp produces; the eigh-based fallback must be exact."""
    torch.manual_seed(2)
    tall = torch.randn(2, 6, 4, dtype=torch.float64)
    clustered = torch.diag(torch.tensor([1.1, 1.1, 1.1, 1.0, 1.0, 1.0], dtype=torch.float64))
    inputs = [tall, tall.mT, qr_retraction(torch.randn(6, 6, dtype=torch.float64)) @ clustered]
    expected = [torch.linalg.svdvals(x) for x in inputs]

    def give_up(*args: object, **kwargs: object) -> None:
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(torch.linalg, "svd", give_up)
    for x, sigma_expected in zip(inputs, expected):
        p, sigma, qh = svd(x)
        torch.testing.assert_close(sigma, sigma_expected)
        torch.testing.assert_close((p * sigma.unsqueeze(-2)) @ qh, x)
        k = sigma.shape[-1]
        torch.testing.assert_close(p.mT @ p, torch.eye(k, dtype=x.dtype).expand_as(p.mT @ p))
        torch.testing.assert_close(qh @ qh.mT, torch.eye(k, dtype=x.dtype).expand_as(qh @ qh.mT))
    projected, _ = condition_projection(inputs[2] @ torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)), 0.1)
    assert kappa(projected) <= 1.1 + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 6),
    tau=st.one_of(st.just(0.0), st.floats(0.01, 2.0)),
    spread=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(["polar", "qr"]),
)
def test_projection_is_bounded_and_idempotent(r: int, tau: float, spread: float, seed: int, method: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    sigma = torch.exp(spread * torch.rand(r, generator=generator, dtype=torch.float64)).sort(descending=True)[0]
    s = random_matrix(r, sigma, generator)
    once, singular_values = condition_projection(s, tau, method)
    twice, _ = condition_projection(once, tau, method)
    assert kappa(once) <= 1 + tau + 1e-9
    torch.testing.assert_close(twice, once, atol=1e-10 * float(sigma[0]), rtol=0)
    torch.testing.assert_close(singular_values, torch.linalg.svdvals(once))


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 6),
    tau=st.floats(0.01, 2.0),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_projection_leaves_well_conditioned_core_unchanged(r: int, tau: float, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    inside = 1 + tau * torch.rand(r, generator=generator, dtype=torch.float64) * (1 - 1e-9)
    s = random_matrix(r, scale * inside.sort(descending=True)[0], generator)
    projected, _ = condition_projection(s, tau)
    torch.testing.assert_close(projected, s, atol=1e-12 * scale, rtol=0)


def test_clamp_matches_the_reference_band_when_it_clips_both_ends() -> None:
    tau = 0.1
    s = torch.diag(torch.tensor([10.0, 1.0, 1.0], dtype=torch.float64))
    mu = 4.0
    e = mu * tau / (2 + tau)
    _, sigma = condition_projection(s, tau)
    torch.testing.assert_close(sigma, torch.tensor([mu + e, mu - e, mu - e], dtype=torch.float64))


def test_clamp_moves_the_band_instead_of_clipping_one_end_needlessly() -> None:
    # The reference band [0.971, 1.069] (mean 1.02) would clip 1.2 to 1.069 although the ones fit a band
    # [1, 1.1]; only the top value moves.
    s = torch.diag(torch.tensor([1.2] + [1.0] * 9, dtype=torch.float64))
    _, sigma = condition_projection(s, 0.1)
    torch.testing.assert_close(sigma, torch.tensor([1.1] + [1.0] * 9, dtype=torch.float64))


def test_tau_zero_projections() -> None:
    generator = torch.Generator().manual_seed(3)
    s = random_matrix(4, torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64), generator)
    scale = math.sqrt(float((s**2).sum()) / 4)
    polar, sigma = condition_projection(s, 0.0, "polar")
    p, _, qh = torch.linalg.svd(s)
    torch.testing.assert_close(polar, scale * p @ qh)
    torch.testing.assert_close(sigma, torch.full((4,), scale, dtype=torch.float64))
    qr, _ = condition_projection(s, 0.0, "qr")
    torch.testing.assert_close(qr, scale * qr_retraction(s))


@pytest.mark.parametrize("tau", [-0.1, float("nan"), float("inf")])
def test_bad_tau_raises(tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        condition_projection(torch.eye(2), tau)
    with pytest.raises(ValueError, match="tau"):
        CondLR(LowRankLinear(3, 3, 2), lr=0.1, tau=tau)


# ---------------------------------------------------------------------------------------------- CondLR


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = LowRankConv2d(2, 4, 3, rank=3, padding=1)
        self.body = nn.Sequential(nn.LeakyReLU(), nn.Flatten(), LowRankLinear(100, 6, rank=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv(x))


def small_problem(seed: int = 0) -> tuple[Small, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return Small(), torch.randn(16, 2, 5, 5), torch.randn(16, 6)


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("grad_scale", ["reference", "exact"])
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_constraints_hold_after_500_steps(tau: float, grad_scale: str) -> None:
    model, x, y = small_problem()
    opt = CondLR(model, lr=0.05, momentum=0.5, tau=tau, grad_scale=grad_scale)
    train(model, opt, x, y, 500)
    for layer in (model.conv, model.body[2]):
        u, s, v = layer.factors()
        assert orthonormality_error(u) < TOL and orthonormality_error(v) < TOL
        assert kappa(s) <= 1 + tau + TOL


def test_reference_step_matches_the_formula() -> None:
    torch.manual_seed(4)
    layer = LowRankLinear(6, 5, rank=3, dtype=torch.float64)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    u0, s0, v0 = (t.detach().clone() for t in layer.factors())
    F.mse_loss(layer(x), y).backward()
    lr, tau = 0.3, 0.2
    opt = CondLR(layer, lr=lr, momentum=0.9, tau=tau)
    opt.step()  # first step: buffer = gradient, c = 1
    direction_u = layer.U.grad - u0 @ (u0.T @ layer.U.grad)
    direction_v = layer.V.grad - v0 @ (v0.T @ layer.V.grad)
    expected_s, sigma = condition_projection(s0 - lr * layer.S.grad, tau)
    torch.testing.assert_close(layer.U, qr_retraction(u0 - lr * direction_u))
    torch.testing.assert_close(layer.V, qr_retraction(v0 - lr * direction_v))
    torch.testing.assert_close(layer.S, expected_s)
    # the buffers keep the processed (tangent) directions; the next scale is (σ_min/σ_max)² of the new S
    torch.testing.assert_close(opt.state[layer.U]["momentum_buffer"], direction_u)
    torch.testing.assert_close(opt.state[layer.V]["momentum_buffer"], direction_v)
    torch.testing.assert_close(opt.state[layer.S]["momentum_buffer"], layer.S.grad)
    torch.testing.assert_close(opt.state[layer.S]["grad_scale"], (sigma[-1] / sigma[0]) ** 2)


def test_exact_step_follows_the_projected_gradient() -> None:
    """With ``grad_scale="exact"``, (W₁ − W₀)/lr → −P_T(G) (tangent projection of the dense gradient)."""
    torch.manual_seed(5)
    layer = LowRankLinear(9, 7, rank=3, dtype=torch.float64)
    u, _, v = (factor.detach().clone() for factor in layer.factors())
    layer.set_factors(u, torch.diag(torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)) @ qr_retraction(
        torch.randn(3, 3, dtype=torch.float64)), v)  # κ = 9/7 < 1.5: the projection does not act
    x, y = torch.randn(10, 9, dtype=torch.float64), torch.randn(10, 7, dtype=torch.float64)
    w0 = layer.weight_matrix().detach().clone().requires_grad_()
    F.mse_loss(F.linear(x, w0, layer.bias), y).backward()
    g = w0.grad
    pu, pv = u @ u.T, v @ v.T
    tangent = pu @ g + g @ pv - pu @ g @ pv
    F.mse_loss(layer(x), y).backward()
    lr = 1e-6
    CondLR(layer, lr=lr, tau=0.5, grad_scale="exact").step()
    moved = (layer.weight_matrix().detach() - w0.detach()) / lr
    assert float(torch.linalg.matrix_norm(moved + tangent) / torch.linalg.matrix_norm(tangent)) < 1e-4


def test_plain_parameters_get_sgd_with_momentum() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.LeakyReLU(), LowRankLinear(8, 3, rank=2))
    model[3].requires_grad_(False)  # a frozen low-rank layer: the gradients of the others match plain SGD's
    twin = copy.deepcopy(model)
    x, y = torch.randn(12, 5), torch.randn(12, 3)
    kwargs = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}
    train(model, CondLR(model, **kwargs), x, y, 5)
    train(twin, torch.optim.SGD(twin.parameters(), **kwargs), x, y, 5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(
    "options", [{"tau": 0.1}, {"tau": 0.0, "grad_scale": "exact"}, {"tau": 0.5, "theta": 0.2, "adapt_every": 2}]
)
def test_state_dict_round_trip_is_bit_exact(options: dict) -> None:
    model, x, y = small_problem(7)
    if "theta" in options:
        model.body[2] = LowRankLinear.from_dense(model.body[2].to_dense(), rank=3, max_rank=6)
    opt = CondLR(model, lr=0.05, momentum=0.9, **options)
    train(model, opt, x, y, 5)
    twin = copy.deepcopy(model)
    twin_opt = CondLR(twin, lr=0.05, momentum=0.9, **options)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    fresh = copy.deepcopy(model)
    fresh_opt = CondLR(fresh, lr=0.05, momentum=0.9, **options)  # control: no state restored
    for m, o in ((model, opt), (twin, twin_opt), (fresh, fresh_opt)):
        train(m, o, x, y, 2)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_lr_scheduler_drives_the_step() -> None:
    model, x, y = small_problem(8)
    opt = CondLR(model, lr=0.1, momentum=0.0, tau=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    train(model, opt, x, y, 1)
    scheduler.step()
    before = copy.deepcopy(model.state_dict())
    train(model, opt, x, y, 1)
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, before[name], atol=1e-6, rtol=0)
    assert opt.param_groups[0]["lr"] == 0.0


def test_param_groups_need_the_model_and_whole_layers() -> None:
    model, _, _ = small_problem()
    with pytest.raises(ValueError, match="model"):
        CondLR(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="all or none"):
        CondLR([model.conv.U, model.conv.S], lr=0.1, model=model)
    groups = [{"params": list(model.conv.parameters()), "lr": 0.01}, {"params": list(model.body.parameters())}]
    opt = CondLR(groups, lr=0.1, model=model)
    assert [group["lr"] for group in opt.param_groups] == [0.01, 0.1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grad_scale": "code"}, "grad_scale"),
        ({"s_projection": "cayley"}, "s_projection"),
        ({"theta": 1.5}, "theta"),
        ({"adapt_every": 0}, "adapt_every"),
        ({"momentum": -0.5}, "momentum"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_optimizer_arguments_raise(kwargs: dict, name: str) -> None:
    arguments = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        CondLR(LowRankLinear(3, 3, 2), **arguments)


# ---------------------------------------------------------------------------------------------- adaptive


def test_truncation_rank() -> None:
    sigma = torch.tensor([3.0, 2.0, 0.1, 0.01])
    assert truncation_rank(sigma, 0.1, 10) == 2
    assert truncation_rank(sigma, 0.0, 10) == 4
    assert truncation_rank(sigma, 0.0, 3) == 3
    assert truncation_rank(sigma, 0.99, 10) == 1


def low_rank_regression(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of a linear map 16 → 12 with ``rank`` unit singular values."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(12, rank, generator=generator))[0]
    right = torch.linalg.qr(torch.randn(16, rank, generator=generator))[0]
    x = torch.randn(64, 16, generator=generator)
    return x, x @ right @ left.T


def check_layer(layer: LowRankLinear, tau: float) -> None:
    u, s, v = layer.factors()
    assert orthonormality_error(u) < TOL and orthonormality_error(v) < TOL
    assert kappa(s) <= 1 + tau + TOL
    r = layer.rank
    for tensor in (layer.U[:, r:], layer.S[r:], layer.S[:, r:], layer.V[:, r:]):
        assert torch.count_nonzero(tensor) == 0


def test_adaptive_rank_grows_towards_the_target() -> None:
    x, y = low_rank_regression(5, 9)
    torch.manual_seed(9)
    layer = LowRankLinear(16, 12, rank=1, max_rank=8, bias=False)
    opt = CondLR(layer, lr=0.5, momentum=0.5, tau=0.5, grad_scale="exact", theta=0.05)
    first = F.mse_loss(layer(x), y).item()
    ranks = []
    for _ in range(40):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
        ranks.append(layer.rank)
        check_layer(layer, 0.5)
    assert max(ranks) > 1 and layer.rank <= 8
    assert F.mse_loss(layer(x), y).item() < 0.5 * first
    buffer = opt.state[layer.U]["momentum_buffer"]
    assert buffer.shape == layer.U.shape and torch.count_nonzero(buffer[:, layer.rank :]) == 0


def test_adaptive_rank_shrinks_with_a_large_tolerance() -> None:
    x, y = low_rank_regression(1, 10)
    torch.manual_seed(10)
    layer = LowRankLinear(16, 12, rank=8, bias=False)
    opt = CondLR(layer, lr=0.01, momentum=0.9, tau=0.1, theta=0.45)
    train(layer, opt, x, y, 10)
    assert layer.rank < 8
    check_layer(layer, 0.1)


# ---------------------------------------------------------------------------------------------- training


def test_condlr_trains_a_low_rank_mlp() -> None:
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(256, 20, generator=generator)
    labels = (x @ torch.randn(20, generator=generator) > 0).long()
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(20, 64), nn.LeakyReLU(), nn.Linear(64, 64), nn.LeakyReLU(), nn.Linear(64, 2))
    to_lowrank(model, rank=0.25)
    opt = CondLR(model, lr=0.2, momentum=0.5, tau=0.1)
    first = F.cross_entropy(model(x), labels).item()
    for _ in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert (model(x).argmax(1) == labels).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------- baseline


def test_qr_projected_sgd_orthonormalises_wide_weights_only() -> None:
    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(36, 40))  # 4 × 18 wide, 40 × 36 tall
    twin = copy.deepcopy(model)
    x, y = torch.randn(5, 2, 5, 5), torch.randn(5, 40)
    train(model, QRProjectedSGD(model.parameters(), lr=0.1, momentum=0.5), x, y, 1)
    train(twin, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.5), x, y, 1)
    rows = model[0].weight.reshape(4, -1)
    torch.testing.assert_close(rows @ rows.T, torch.eye(4), atol=TOL, rtol=0)
    sgd_rows = twin[0].weight.reshape(4, -1)
    torch.testing.assert_close(sgd_rows @ rows.T @ rows, sgd_rows, atol=TOL, rtol=0)  # same row space
    for name in ("0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(model.state_dict()[name], twin.state_dict()[name])


def test_svd_falls_back_when_lapack_returns_nan(monkeypatch):
    """A finite input whose LAPACK SVD comes back with NaN (seen in a CondLR run) takes the eigh fallback."""
    from robustlr.lowrank import manifold

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 6, generator=gen)
    real = torch.linalg.svd

    def broken(a, full_matrices=True):
        p, s, qh = real(a, full_matrices=full_matrices)
        return p, s * float("nan"), qh

    monkeypatch.setattr(torch.linalg, "svd", broken)
    p, s, qh = manifold.svd(x)
    assert torch.isfinite(p).all() and torch.isfinite(s).all() and torch.isfinite(qh).all()
    torch.testing.assert_close((p * s) @ qh, x, rtol=1e-4, atol=1e-5)
    projected, _ = manifold.condition_projection(x, 0.0)
    assert torch.isfinite(projected).all()
