"""Low-rank layers: dense equivalence, SVD conversion, initialisation, serialisation, argument checks."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlr.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    LowRankConv2d,
    LowRankLinear,
)
from robustlr.lowrank.layers import resolve_rank, write_leading_block

ATOL = 1e-5


def dense_usv(layer: LowRankLinear | LowRankConv2d) -> torch.Tensor:
    """Dense flattened W = U S Vᵀ computed directly from the parameters (independent of the layer's code)."""
    r = layer.rank
    return layer.U[:, :r] @ layer.S[:r, :r] @ layer.V[:, :r].T


def random_core(layer: LowRankLinear | LowRankConv2d) -> None:
    """Give the layer a full (non-diagonal) core so the tests exercise S as a matrix."""
    with torch.no_grad():
        r = layer.rank
        layer.S[:r, :r] = torch.randn(r, r)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 4, 7)])
def test_linear_matches_dense(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = LowRankLinear(7, 5, rank=3, bias=bias)
    random_core(layer)
    x = torch.randn(*shape)
    expected = F.linear(x, dense_usv(layer), layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)
    assert (layer.bias is None) == (not bias)


CONV_CASES = [
    {"stride": 1, "padding": 0},
    {"stride": 2, "padding": 1},
    {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"stride": 1, "padding": "same", "dilation": 2},
    {"stride": 1, "padding": "same", "kernel_size": (2, 4)},
    {"stride": 3, "padding": "valid"},
    {"stride": 1, "padding": 2, "padding_mode": "reflect"},
    {"stride": 2, "padding": (1, 2), "padding_mode": "replicate"},
    {"stride": 1, "padding": "same", "padding_mode": "circular", "dilation": (2, 1)},
    {"stride": 1, "padding": "same", "padding_mode": "reflect", "kernel_size": 2},
]


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, case: dict) -> torch.Tensor:
    """F.conv2d with an explicit F.pad for the non-zero padding modes."""
    stride, dilation = case.get("stride", 1), case.get("dilation", 1)
    padding, mode = case["padding"], case.get("padding_mode", "zeros")
    if mode == "zeros":
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    kh, kw = weight.shape[-2:]
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        pads = (pw, pw, ph, ph)
    return F.conv2d(F.pad(x, pads, mode=mode), weight, bias, stride, 0, dilation)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_dense(case: dict, bias: bool) -> None:
    torch.manual_seed(1)
    kernel = case.get("kernel_size", 3)
    kwargs = {k: v for k, v in case.items() if k != "kernel_size"}
    layer = LowRankConv2d(4, 6, kernel, rank=3, bias=bias, **kwargs)
    random_core(layer)
    x = torch.randn(2, 4, 9, 11)
    weight = dense_usv(layer).reshape(layer.weight_shape)
    expected = reference_conv(x, weight, layer.bias, case)
    out = layer(x)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer.to_dense()(x), expected, atol=ATOL, rtol=0)
    assert (layer.bias is None) == (not bias)


def test_factorized_matches_dense() -> None:
    torch.manual_seed(2)
    linear = FactorizedLinear(8, 5, rank=2)
    x = torch.randn(4, 8)
    torch.testing.assert_close(linear(x), F.linear(x, linear.A @ linear.B.T, linear.bias), atol=ATOL, rtol=0)
    case = {"stride": 2, "padding": 1, "padding_mode": "reflect"}
    conv = FactorizedConv2d(3, 5, 3, rank=2, bias=False, **case)
    x = torch.randn(2, 3, 8, 8)
    weight = (conv.A @ conv.B.T).reshape(5, 3, 3, 3)
    torch.testing.assert_close(conv(x), reference_conv(x, weight, None, case), atol=ATOL, rtol=0)
    assert [name for name, _ in conv.named_parameters()] == ["A", "B"]
    assert conv.singular_values().shape == (2,)


@pytest.mark.parametrize("cls", [LowRankLinear, FactorizedLinear])
def test_from_dense_full_rank_linear(cls: type) -> None:
    torch.manual_seed(3)
    dense = nn.Linear(12, 9)
    layer = cls.from_dense(dense, rank=1.0)
    x = torch.randn(6, 12)
    torch.testing.assert_close(layer(x), dense(x), atol=ATOL, rtol=0)
    assert layer.rank == 9


@pytest.mark.parametrize("cls", [LowRankConv2d, FactorizedConv2d])
def test_from_dense_full_rank_conv(cls: type) -> None:
    torch.manual_seed(4)
    dense = nn.Conv2d(3, 10, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), padding_mode="circular")
    layer = cls.from_dense(dense, rank=10)
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(layer(x), dense(x), atol=ATOL, rtol=0)
    assert layer.padding_mode == "circular" and layer.dilation == (2, 1)


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_truncation_error_is_eckart_young_tail(rank: int) -> None:
    torch.manual_seed(5)
    dense = nn.Conv2d(6, 8, 3, dtype=torch.float64)
    matrix = dense.weight.detach().reshape(8, -1)
    sigma = torch.linalg.svdvals(matrix)
    for cls in (LowRankConv2d, FactorizedConv2d):
        layer = cls.from_dense(dense, rank)
        error = layer.weight_matrix().detach() - matrix
        torch.testing.assert_close(torch.linalg.matrix_norm(error), sigma[rank:].norm(), atol=1e-10, rtol=0)
        torch.testing.assert_close(torch.linalg.matrix_norm(error, ord=2), sigma[rank], atol=1e-10, rtol=0)


def test_fresh_layer_is_svd_of_torch_default_init() -> None:
    torch.manual_seed(6)
    dense = nn.Linear(10, 7)
    torch.manual_seed(6)
    layer = LowRankLinear(10, 7, rank=7)
    torch.testing.assert_close(layer.weight, dense.weight, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer.bias, dense.bias)
    torch.manual_seed(7)
    dense_conv = nn.Conv2d(3, 5, 3, bias=False)
    torch.manual_seed(7)
    conv = LowRankConv2d(3, 5, 3, rank=2, bias=False)
    assert conv.bias is None
    sigma = torch.linalg.svdvals(dense_conv.weight.detach().reshape(5, -1))
    torch.testing.assert_close(conv.singular_values(), sigma[:2], atol=ATOL, rtol=0)


def test_parameters_are_named_roles_and_orthonormal() -> None:
    layer = LowRankConv2d(4, 6, 3, rank=3, max_rank=5)
    assert [name for name, _ in layer.named_parameters()] == ["U", "S", "V", "bias"]
    assert layer.U.shape == (6, 5) and layer.S.shape == (5, 5) and layer.V.shape == (36, 5)
    u, s, v = layer.factors()
    eye = torch.eye(3)
    torch.testing.assert_close(u.T @ u, eye, atol=ATOL, rtol=0)
    torch.testing.assert_close(v.T @ v, eye, atol=ATOL, rtol=0)
    assert torch.count_nonzero(layer.U[:, 3:]) == 0 and torch.count_nonzero(layer.S[3:]) == 0
    assert layer.rank == 3 and layer.max_rank == 5 and layer.full_rank == 6
    assert "rank=3, max_rank=5" in repr(layer)


@pytest.mark.parametrize(
    ("spec", "expected"), [(1, 1), (10, 10), (1.0, 10), (0.5, 5), (0.3, 3), (0.25, 3), (0.01, 1), (0.8, 8)]
)
def test_resolve_rank(spec: int | float, expected: int) -> None:
    assert resolve_rank(spec, 10, 20) == expected


@pytest.mark.parametrize("bad", [0, -1, 11, 1.5, 0.0, -0.2, True, "3", None])
def test_bad_rank_raises(bad: object) -> None:
    with pytest.raises(ValueError, match=r"rank must be .*got"):
        LowRankLinear(20, 10, rank=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        FactorizedConv2d(2, 10, 3, rank=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"groups": 2}, "groups"),
        ({"padding": "full"}, "padding"),
        ({"padding": -1}, "padding"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"padding": "same", "stride": 2}, "same"),
        ({"stride": 0}, "stride"),
        ({"dilation": (1, 2, 3)}, "dilation"),
        ({"max_rank": 2}, "max_rank"),
    ],
)
def test_bad_conv_arguments_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LowRankConv2d(4, 8, 3, rank=3, **kwargs)


def test_from_dense_refuses_grouped_conv_and_wrong_type() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 8, 3, groups=2), rank=2)
    with pytest.raises(ValueError, match="nn.Linear"):
        LowRankLinear.from_dense(nn.Conv2d(4, 8, 3), rank=2)


def test_to_dense_round_trip() -> None:
    torch.manual_seed(8)
    layer = LowRankConv2d(3, 4, 3, rank=2, padding="same", padding_mode="replicate", bias=False)
    random_core(layer)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d) and dense.bias is None and dense.padding == "same"
    torch.testing.assert_close(dense.weight, dense_usv(layer).reshape(4, 3, 3, 3), atol=ATOL, rtol=0)
    linear = LowRankLinear(5, 3, rank=2).to_dense()
    assert isinstance(linear, nn.Linear) and linear.bias is not None


def adapted_layer() -> LowRankLinear:
    """A layer whose rank was changed after construction (capacity 6, rank 2)."""
    torch.manual_seed(9)
    layer = LowRankLinear(8, 7, rank=4, max_rank=6)
    u, s, v = layer.factors()
    layer.set_factors(u[:, :2], torch.randn(2, 2), v[:, :2])
    return layer


def test_state_dict_round_trip_keeps_rank() -> None:
    layer = adapted_layer()
    fresh = LowRankLinear(8, 7, rank=5, max_rank=6)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.rank == 2
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("how", ["deepcopy", "save_module", "save_state_dict"])
def test_copy_and_serialisation(how: str) -> None:
    layer = adapted_layer()
    if how == "deepcopy":
        other = copy.deepcopy(layer)
    else:
        buffer = io.BytesIO()
        torch.save(layer if how == "save_module" else layer.state_dict(), buffer)
        buffer.seek(0)
        if how == "save_module":
            other = torch.load(buffer, weights_only=False)
        else:
            other = LowRankLinear(8, 7, rank=1, max_rank=6)
            other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.rank == 2 and other.max_rank == 6
    for name, p in layer.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name])
    x = torch.randn(3, 8)
    assert torch.equal(other(x), layer(x))


def test_set_factors_validates_and_zeroes_capacity() -> None:
    layer = adapted_layer()
    assert torch.count_nonzero(layer.U[:, 2:]) == 0 and torch.count_nonzero(layer.S[:, 2:]) == 0
    with pytest.raises(ValueError, match="max_rank"):
        layer.set_factors(torch.zeros(7, 7), torch.zeros(7, 7), torch.zeros(8, 7))


def test_write_leading_block() -> None:
    target = torch.ones(4, 5)
    write_leading_block(target, torch.full((2, 3), 7.0))
    assert target[:2, :3].eq(7).all() and target.sum() == 42


def test_forward_macs() -> None:
    linear = LowRankLinear(100, 6, rank=6)
    assert linear.forward_macs() == 100 * 6 + 36 + 6 * 6
    conv = FactorizedConv2d(2, 4, 3, rank=2)
    assert conv.forward_macs(25) == 25 * (18 * 2 + 4 * 2)


def test_gradients_reach_all_factors_and_float64() -> None:
    layer = LowRankConv2d(2, 3, 3, rank=2, dtype=torch.float64)
    layer(torch.randn(1, 2, 5, 5, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None and p.dtype == torch.float64 for p in layer.parameters())
