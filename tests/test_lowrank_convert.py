"""Model conversion, compression accounting and conditioning analysis."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustlr.analysis.conditioning import (
    layer_condition_numbers,
    layer_singular_values,
    network_condition_bound,
    orthogonality_errors,
    spectral_norms,
)
from robustlr.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    compression_report,
    to_lowrank,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(self.proj(x))


class Nested(nn.Module):
    """Conv stem in a Sequential, a custom block inside a ModuleList, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(), nn.Conv2d(6, 4, 3, stride=2))
        self.blocks = nn.ModuleList([nn.Sequential(nn.Flatten(), nn.Linear(36, 16)), Block()])
        self.classifier = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)


DENSE_NAMES = ["stem.0", "stem.2", "blocks.0.1", "blocks.1.proj", "classifier"]


def test_to_lowrank_replaces_every_layer_of_a_nested_model() -> None:
    torch.manual_seed(0)
    model = Nested()
    dense = copy.deepcopy(model)
    assert to_lowrank(model, rank=1.0) is model
    kinds = {name: type(module) for name, module in model.named_modules() if name in DENSE_NAMES}
    assert kinds == {
        "stem.0": LowRankConv2d, "stem.2": LowRankConv2d, "blocks.0.1": LowRankLinear,
        "blocks.1.proj": LowRankLinear, "classifier": LowRankLinear,
    }
    assert not any(type(module) in (nn.Linear, nn.Conv2d) for module in model.modules())
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=0)


def test_fraction_ranks_and_full_rank_classifier() -> None:
    model = to_lowrank(Nested(), rank=0.5)
    ranks = {name: module.rank for name, module in model.named_modules() if isinstance(module, LowRankLayer)}
    assert ranks == {"stem.0": 3, "stem.2": 2, "blocks.0.1": 8, "blocks.1.proj": 8, "classifier": 5}
    model = to_lowrank(Nested(), rank=0.5, keep_last_full=False)
    assert model.classifier.rank == 3


def test_rank_dict_exclude_and_vanilla() -> None:
    model = to_lowrank(Nested(), rank={"stem.2": 1, "blocks.1.proj": 0.25}, exclude=("blocks.0",))
    assert model.stem[2].rank == 1 and model.blocks[1].proj.rank == 4
    assert type(model.stem[0]) is nn.Conv2d and type(model.blocks[0][1]) is nn.Linear
    assert model.classifier.rank == 5  # not in the dict, kept full by keep_last_full
    model = to_lowrank(Nested(), rank={"classifier": 2})
    assert model.classifier.rank == 2  # an explicit entry wins
    model = to_lowrank(Nested(), rank=2, method="vanilla")
    assert isinstance(model.stem[0], FactorizedConv2d) and isinstance(model.classifier, FactorizedLinear)
    assert model.stem[0].rank == 2 and model.classifier.rank == 5


def test_to_lowrank_capacity_and_root_module() -> None:
    model = to_lowrank(Nested(), rank=0.25, max_rank=0.5)
    assert model.blocks[1].proj.rank == 4 and model.blocks[1].proj.max_rank == 8
    assert model.classifier.max_rank == 5  # capacity never below the rank
    layer = to_lowrank(nn.Linear(4, 3), rank=0.5)
    assert isinstance(layer, LowRankLinear) and layer.rank == 3
    assert to_lowrank(nn.Linear(4, 3), rank=0.5, keep_last_full=False).rank == 2


def test_attention_projection_subclass_is_left_alone() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 2))
    to_lowrank(model, rank=0.5)
    assert type(model[0].out_proj) is not LowRankLinear and isinstance(model[1], LowRankLinear)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"rank": {"stem.1": 2}}, r"not nn.Linear/nn.Conv2d: \['stem.1'\].*valid names: \['stem.0'"),
        ({"rank": {"nope": 2}}, "valid names"),
        ({"rank": {"stem.0": 7}}, r"layer 'stem.0': rank must be"),
        ({"rank": 1.5}, "rank must be"),
        ({"rank": 0}, "rank must be"),
        ({"rank": 2, "exclude": ("nope",)}, "exclude"),
        ({"rank": {"stem.0": 2}, "exclude": ("stem",)}, "both excluded"),
        ({"rank": 2, "method": "lora"}, "method"),
        ({"rank": 2, "method": "vanilla", "max_rank": 3}, "max_rank"),
    ],
)
def test_bad_conversion_arguments_raise(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        to_lowrank(Nested(), **kwargs)


def test_model_without_layers_raises() -> None:
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_lowrank(nn.Sequential(nn.ReLU()), rank=1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(100, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_compression_report_matches_hand_arithmetic() -> None:
    model = to_lowrank(Tiny(), rank=0.5)
    model.train()
    report = compression_report(model, input_shape=(2, 5, 5))
    assert model.training and model.features[1].training  # modes restored after the measuring pass
    conv, head = report.layers
    # conv: n = 4, m = 2·3·3 = 18, r = ceil(0.5·4) = 2, no bias, 5×5 output positions
    assert (conv.name, conv.kind, conv.shape, conv.rank, conv.full_rank) == ("features.0", "condlr", (4, 18), 2, 4)
    assert (conv.dense_params, conv.params) == (72, 2 * (4 + 18) + 4)
    assert conv.rank_reduction == 0.5 and conv.param_reduction == pytest.approx(1 - 48 / 72)
    assert (conv.dense_macs, conv.macs) == (25 * 72, 25 * (18 * 2 + 4 * 2) + 4 * 2 * 2)
    # classifier: full rank 6 of 6 × 100; U S Vᵀ is larger than the dense weight
    assert (head.rank, head.full_rank, head.dense_params, head.params) == (6, 6, 606, 6 * 106 + 36 + 6)
    assert head.rank_reduction == 0 and head.param_reduction == pytest.approx(1 - 678 / 606)
    assert head.param_reduction < 0
    assert (head.dense_macs, head.macs) == (600, 100 * 6 + 36 + 6 * 6)
    assert report.rank_reduction == pytest.approx(1 - 8 / 10)
    assert (report.dense_params, report.params, report.other_params) == (678, 726, 8)
    assert report.param_reduction == pytest.approx(1 - 726 / 678)
    assert report.model_param_reduction == pytest.approx(1 - 734 / 686)
    assert (report.dense_macs, report.macs) == (2400, 1788)
    rows = report.to_rows()
    assert rows[-1]["name"] == "total" and rows[-1]["params"] == 726
    markdown = report.to_markdown()
    assert "| features.0 | condlr | 4×18 | 2 | 4 | 50.0 % |" in markdown and "| total |" in markdown


def test_compression_report_without_input_shape_and_dense_layers() -> None:
    model = to_lowrank(Tiny(), rank=0.5, exclude=("head",), method="vanilla")
    report = compression_report(model)
    conv, head = report.layers
    assert conv.kind == "vanilla" and conv.params == 2 * 22 and conv.macs is None and report.macs is None
    assert head.kind == "dense" and head.params == head.dense_params == 606 and head.macs == 600


# ---------------------------------------------------------------------------------------------- conditioning


def test_condition_numbers_of_every_layer_kind() -> None:
    torch.manual_seed(1)
    dense = nn.Linear(6, 4, dtype=torch.float64)
    low = LowRankLinear(6, 5, rank=3)
    u, _, v = low.factors()
    low.set_factors(u, torch.diag(torch.tensor([3.0, 2.0, 0.5])), v)
    vanilla = FactorizedConv2d(2, 3, 2, rank=2, dtype=torch.float64)
    model = nn.Sequential(dense, nn.LeakyReLU(), low, nn.LeakyReLU(), nn.Unflatten(1, (5, 1, 1)))
    model.add_module("vanilla", vanilla)
    kappas = layer_condition_numbers(model)
    assert kappas["0"] == pytest.approx(np.linalg.cond(dense.weight.detach().numpy()))
    assert kappas["2"] == pytest.approx(6.0)
    vanilla_sigma = np.linalg.svd((vanilla.A @ vanilla.B.T).detach().numpy(), compute_uv=False)[:2]
    assert kappas["vanilla"] == pytest.approx(vanilla_sigma[0] / vanilla_sigma[1])
    assert network_condition_bound(model) == pytest.approx(math.prod(kappas.values()))
    norms = spectral_norms(model)
    assert norms["2"] == pytest.approx(3.0) and norms["vanilla"] == pytest.approx(vanilla_sigma[0])


def test_rank_deficient_dense_weight_uses_nonzero_singular_values() -> None:
    dense = nn.Linear(5, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(torch.outer(torch.arange(1.0, 5.0), torch.ones(5)) + 0)
        dense.weight[:, 0] += 1.0
    assert layer_singular_values(dense).numel() == 2
    with pytest.raises(ValueError, match="module"):
        layer_singular_values(nn.ReLU())


def test_orthogonality_errors() -> None:
    layer = LowRankConv2d(3, 4, 3, rank=2)
    model = nn.Sequential(layer)
    assert orthogonality_errors(model)["0"] < 1e-5
    with torch.no_grad():
        layer.U[:, 0] *= 2.0
    assert orthogonality_errors(model)["0"] == pytest.approx(3.0, rel=1e-5)
