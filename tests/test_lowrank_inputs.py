"""Bad inputs to the low-rank layers, to_lowrank, CondLR and QRProjectedSGD: each a ValueError naming what is
wrong, raised before anything changes; numbers of every kind (numpy scalars) accepted, bools refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_lowrank_optim import Small
from robustlr.lowrank import (
    CondLR,
    FactorizedLinear,
    LowRankLinear,
    QRProjectedSGD,
    compression_report,
    to_lowrank,
)




def _backward(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 2, 5, 5, generator=generator), torch.randn(8, 6, generator=generator)
    model.zero_grad()
    F.mse_loss(model(x), y).backward()


def _stepped(optimizer_cls=CondLR, model_cls=None, **options) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model and its optimiser after two steps (momentum buffers and per-layer state exist), with the
    gradients of a third batch."""
    torch.manual_seed(0)
    model = (model_cls or Small)()
    opt = optimizer_cls(model, lr=0.05, momentum=0.9, **options)
    for seed in range(2):
        _backward(model, seed)
        opt.step()
    _backward(model, 2)
    return model, opt


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_unchanged(model: nn.Module, opt: torch.optim.Optimizer, before: tuple[dict, dict]) -> None:
    model_state, opt_state = before
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, model_state[key]), key
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            now = after["state"][index][key]
            assert torch.equal(now, value) if isinstance(value, torch.Tensor) else now == value, (index, key)


# ------------------------------------------------------------------------------------ CondLR: finiteness


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_condlr_refuses_a_non_finite_gradient_before_any_parameter_moves(bad: float) -> None:
    model, opt = _stepped()
    model.body[2].V.grad[3, 1] = bad  # the last layer: every other one would already have been stepped
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"gradient of 'body.2.V' .* no parameter and no optimiser state"):
        opt.step()
    _assert_unchanged(model, opt, before)


@pytest.mark.parametrize(
    ("key", "value"), [("lr", float("inf")), ("lr", float("nan")), ("momentum", float("inf")),
                       ("weight_decay", float("nan")), ("tau", float("inf")), ("lr", -1.0)]
)
def test_condlr_refuses_a_bad_hyperparameter_set_after_construction(key: str, value: float) -> None:
    model, opt = _stepped()
    opt.param_groups[0][key] = value  # as a user or a scheduler could
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=rf"param_groups\[0\].*{key}.*{value}"):
        opt.step()
    _assert_unchanged(model, opt, before)


@pytest.mark.parametrize("key", ["lr", "momentum", "weight_decay"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), True])
def test_optimizers_refuse_non_finite_hyperparameters(key: str, value: object) -> None:
    arguments = {"lr": 0.1, key: value}
    with pytest.raises(ValueError, match=key):
        CondLR(Small(), **arguments)
    with pytest.raises(ValueError, match=key):
        QRProjectedSGD(nn.Linear(3, 2), **arguments)


def test_qr_projected_sgd_refuses_a_non_finite_gradient_and_a_bad_lr_set_later() -> None:
    def dense() -> nn.Module:
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(100, 6))

    model, opt = _stepped(QRProjectedSGD, dense)
    model[2].weight.grad[0, 0] = float("nan")
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"gradient of '2.weight'"):
        opt.step()
    _assert_unchanged(model, opt, before)
    _backward(model)
    opt.param_groups[0]["lr"] = float("inf")
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\].*inf"):
        opt.step()
    _assert_unchanged(model, opt, before)


# ------------------------------------------------------------------------------ CondLR: what it constrains


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.Linear(4, 3)), to_lowrank(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), 1, method="vanilla")],
    ids=["dense", "vanilla"],
)
def test_condlr_refuses_a_model_without_low_rank_layers(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"model \(Sequential\) has no low-rank layer.*to_lowrank"):
        CondLR(model, lr=0.1)


def test_condlr_refuses_params_without_any_low_rank_factor() -> None:
    model = Small()
    biases = [model.conv.bias, model.body[2].bias]
    with pytest.raises(ValueError, match="none of the U, S, V factors of the 2 low-rank layer"):
        CondLR(biases, lr=0.1, model=model)


# -------------------------------------------------------------------------------------- numbers by kind


def test_numpy_numbers_are_accepted_and_give_the_same_steps() -> None:
    plain, opt = _stepped(tau=0.1, theta=0.2, adapt_every=2)
    numpy, numpy_opt = _stepped(tau=np.float32(0.1), theta=np.float64(0.2), adapt_every=np.int64(2))
    numpy_opt.param_groups[0]["lr"] = np.float32(0.05)  # a scheduler or a user may write numpy numbers
    opt.step()
    numpy_opt.step()
    for p, q in zip(plain.parameters(), numpy.parameters()):
        assert torch.equal(p, q)
    layer = LowRankLinear(6, 5, rank=np.int64(3), max_rank=np.float32(1.0))
    assert (layer.rank, layer.max_rank) == (3, 5)


@pytest.mark.parametrize(("kwargs", "name"), [({"tau": True}, "tau"), ({"adapt_every": True}, "adapt_every"),
                                              ({"theta": np.float32(1.0)}, "theta")])
def test_bools_and_out_of_range_numpy_values_are_refused(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CondLR(Small(), lr=0.1, **kwargs)


@pytest.mark.parametrize("rank", [np.int64(2), np.float32(0.5)])
def test_to_lowrank_takes_numpy_ranks(rank: object) -> None:
    model = to_lowrank(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), rank)
    assert model[0].rank == 2


def test_to_lowrank_refuses_a_bool_rank() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"rank must be .*got True"):
        to_lowrank(model, True)
    assert all(type(layer) is nn.Linear for layer in model)


# ----------------------------------------------------------------------------------------- to_lowrank


def test_to_lowrank_keeps_a_tied_module_shared() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(6, 3))
    x = torch.randn(4, 6)
    to_lowrank(model, 1.0)
    assert isinstance(model[0], LowRankLinear) and model[0] is model[2]
    assert len(list(model.parameters())) == 2 * 4  # two layers of U, S, V, bias: the tied one counted once
    report = compression_report(model)
    assert [row.name for row in report.layers] == ["0", "3"]
    assert report.params == (3 * 6 * 6 + 6) + (3 * 3 + 3 * 3 + 6 * 3 + 3) and report.other_params == 0
    model[0].U.grad = torch.ones_like(model[0].U)
    assert model[2].U.grad is model[0].U.grad  # one module: trained once, used twice
    assert model(x).shape == (4, 3)


def test_to_lowrank_refuses_a_weight_shared_by_two_modules() -> None:
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, second, nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0' shares its weight with \['1'\]"):
        to_lowrank(model, 2)
    assert all(type(layer) is nn.Linear for layer in model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_to_lowrank_refuses_a_non_finite_weight_naming_the_layer_and_changes_nothing(bad: float) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    with torch.no_grad():
        model[1][0].weight[1, 2] = bad
    with pytest.raises(ValueError, match=r"layer '1.0': its weight is not finite"):
        to_lowrank(model, 2)
    assert type(model[0]) is nn.Linear  # the layer before it was not converted either


def test_to_lowrank_checks_every_rank_before_converting_any_layer() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"layer '1': rank must be an int in \[1, 3\]"):
        to_lowrank(model, 5)
    assert all(type(layer) is nn.Linear for layer in model)


def test_factorized_layers_count_once_too() -> None:
    shared = nn.Linear(5, 5)
    model = to_lowrank(nn.Sequential(shared, shared, nn.Linear(5, 2)), 2, method="vanilla")
    assert isinstance(model[0], FactorizedLinear) and model[0] is model[1]
