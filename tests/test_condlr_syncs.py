"""The CondLR step at scale: host round trips per step (a constant, independent of layers and steps), the
batched and per-layer linear algebra agreeing, and the device-side fallbacks of the decompositions."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlr.lowrank import CondLR, LowRankLinear, qr_retraction, tangent_projection
from robustlr.lowrank import manifold
from robustlr.lowrank.manifold import tangent_retraction
from robustlr.profiling import HostSyncs

#: Host round trips of one CondLR step: the fused finiteness check of the gradients (before anything moves) and
#: the fused flag of all decompositions (LAPACK SVD finite, Cholesky QR well conditioned) of the step.
STEP_BUDGET = 2


def mlp(layers: int, width: int = 12, seed: int = 0) -> nn.Sequential:
    """``layers`` low-rank layers, the inner ones of equal shape (so the batched path stacks them)."""
    torch.manual_seed(seed)
    body: list[nn.Module] = [LowRankLinear(6, width, rank=4)]
    for _ in range(layers - 2):
        body += [nn.Tanh(), LowRankLinear(width, width, rank=4)]
    return nn.Sequential(*body, nn.Tanh(), LowRankLinear(width, 3, rank=3))


def syncs_per_step(model: nn.Module, opt: CondLR, steps: int) -> list[int]:
    generator = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(16, 6, generator=generator, dtype=dtype), torch.randn(16, 3, generator=generator, dtype=dtype)
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        with HostSyncs() as syncs:
            opt.step()
        counts.append(syncs.total)
    return counts


@pytest.mark.parametrize("options", [{"tau": 0.1}, {"tau": 0.0, "grad_scale": "exact"}, {"tau": 0.5, "batched": True}])
def test_a_condlr_step_reads_the_host_twice_whatever_the_layers_and_steps(options: dict) -> None:
    for layers, steps in ((3, 10), (8, 10), (3, 100)):
        model = mlp(layers)
        counts = syncs_per_step(model, CondLR(model, lr=0.05, momentum=0.9, **options), steps)
        assert counts == [STEP_BUDGET] * steps, (layers, steps, counts)


@pytest.mark.parametrize("options", [{"tau": 0.1}, {"tau": 0.0, "grad_scale": "exact"}, {"tau": 0.0, "s_projection": "qr"}])
@pytest.mark.parametrize(("dtype", "steps", "tolerance"), [(torch.float32, 2, 1e-6), (torch.float64, 30, 1e-12)])
def test_batched_and_per_layer_steps_agree(options: dict, dtype: torch.dtype, steps: int, tolerance: float) -> None:
    """Equal to 1e-6 in float32 (over more steps the two roundings drift apart chaotically, as any two
    summation orders do; in float64 they stay within 1e-12 for 30 steps)."""
    model = mlp(6).to(dtype)
    twin = copy.deepcopy(model)
    runs = []
    for m, batched in ((model, True), (twin, False)):
        opt = CondLR(m, lr=0.1, momentum=0.5, batched=batched, **options)
        syncs_per_step(m, opt, steps)
        runs.append(opt.state_dict()["state"])
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=tolerance, rtol=0)
    assert runs[0].keys() == runs[1].keys()


def test_batched_must_be_a_bool_or_none() -> None:
    with pytest.raises(ValueError, match=r"batched must be None .* True or False; got 'yes'"):
        CondLR(mlp(3), lr=0.1, batched="yes")


def test_cholesky_retraction_is_the_sign_fixed_qr_factor_and_flags_ill_conditioned_steps() -> None:
    generator = torch.Generator().manual_seed(2)
    u = qr_retraction(torch.randn(3, 40, 6, generator=generator))
    step = tangent_projection(u, torch.randn(3, 40, 6, generator=generator))
    for size, usable in ((0.1, True), (10.0, False)):
        x = u - size * step
        q, ok = tangent_retraction(x)
        assert ok.shape == (3,) and bool(ok.all()) is usable
        if usable:
            torch.testing.assert_close(q, qr_retraction(x), atol=1e-6, rtol=0)
    _, ok = tangent_retraction(torch.full((8, 3), float("nan")))
    assert not bool(ok)


def test_an_ill_conditioned_step_falls_back_to_householder_qr() -> None:
    model = mlp(3)
    opt = CondLR(model, lr=50.0, tau=0.1)  # a huge step: κ(U − lr·D) far above the Cholesky QR limit
    counts = syncs_per_step(model, opt, 1)
    assert counts[0] > STEP_BUDGET  # the fallback reads which layers to redo
    for layer in (model[0], model[2], model[4]):
        u, _, v = layer.factors()
        for basis in (u, v):
            torch.testing.assert_close(basis.mT @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)


def test_a_nan_from_lapack_is_redone_by_the_eigh_fallback_in_one_layer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp(4)
    twin = copy.deepcopy(model)
    syncs_per_step(twin, CondLR(twin, lr=0.05, tau=0.1), 1)
    real = torch.linalg.svd

    def broken(a: torch.Tensor, full_matrices: bool = True):
        p, s, qh = real(a, full_matrices=full_matrices)
        return p, (s * float("nan") if a.shape[-1] == 3 else s), qh  # the last layer's core (rank 3)

    monkeypatch.setattr(torch.linalg, "svd", broken)
    syncs_per_step(model, CondLR(model, lr=0.05, tau=0.1), 1)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    p, sigma, qh, ok = manifold.svd_flagged(torch.randn(2, 3, 3))
    assert ok.shape == (2,) and not bool(ok.any())
