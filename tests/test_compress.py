"""``robustlr compress`` and :mod:`robustlr.lowrank.rank_choice`.

Rank choice: energy ranks exact on weights of known singular values (linear and conv kernels flattened as
to_lowrank flattens them); the parameter budget holds, is maximal (no rank can rise by one within it) and its
count agrees with :func:`~robustlr.lowrank.compression_report` of the converted model; layers whose
factorisation would not save weights stay dense. End to end on a network trained here on real Fashion-MNIST:
dense checkpoint → ``robustlr compress`` → table files whose numbers are re-measured independently; an
interrupted compression resumed with ``--resume`` ends with the same weights and table as an uninterrupted one;
bad inputs are one-line errors, before anything is written.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli_error
from robustlr.attacks import build_attack
from robustlr.cli import main
from robustlr.compress import compress, load_compressed
from robustlr.evaluate import at_eps, evaluate
from robustlr.lowrank import LowRankLayer, compression_report, to_lowrank
from robustlr.lowrank.rank_choice import ENERGY_TOLERANCE, choose_ranks, stored_weights
from robustlr.models import create
from robustlr.train.quick import fit

NET = '''from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 49, 64), nn.LeakyReLU(), nn.Linear(64, 10))
'''
ARGS = ["--params", "0.3", "--epochs", "2", "--train-subset", "600", "--val-fraction", "0.2", "--batch-size", "64",
        "--eval-n", "64", "--eps", "0.02", "--eval-steps", "5", "--latency-batch", "16", "--latency-repeats", "3",
        "--no-progress"]
TIMING = ("seconds", "latency", "latency_ms", "finetune_seconds", "run")


def _with_singular_values(n: int, m: int, sigma: list[float], seed: int = 0) -> torch.Tensor:
    """An n × m matrix U diag(σ) Vᵀ with random orthonormal U, V (float64, then float32)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n, len(sigma), generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(m, len(sigma), generator=gen, dtype=torch.float64))[0]
    return (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T


# ------------------------------------------------------------------------------------------------ rank choice
SIGMA_SQUARED = [16.0, 8.0, 4.0, 2.0, 1.0, 1.0]  # total 32: cumulative fractions 1/2, 3/4, 7/8, 15/16, 31/32, 1


def _known_model() -> nn.Sequential:
    """A linear layer and a conv layer (flattened 6 × 54) with singular values √SIGMA_SQUARED, then a classifier
    (float64, so that the singular values are exact to 1e-15)."""
    sigma = [math.sqrt(s) for s in SIGMA_SQUARED]
    model = nn.Sequential(nn.Linear(60, 6), nn.Unflatten(1, (6, 1, 1)), nn.Upsample(size=(4, 4)),
                          nn.Conv2d(6, 6, 3, padding=1), nn.Flatten(), nn.Linear(96, 3)).double()
    with torch.no_grad():
        model[0].weight.copy_(_with_singular_values(6, 60, sigma))
        model[3].weight.copy_(_with_singular_values(6, 54, sigma, seed=1).reshape(6, 6, 3, 3))
    return model


@pytest.mark.parametrize(("energy", "rank"), [(0.5, 1), (0.5 + 1e-9, 2), (0.75, 2), (0.8, 3), (0.875, 3),
                                              (15 / 16, 4), (0.95, 5), (31 / 32, 5), (1.0, 6)])
def test_energy_rank_is_the_smallest_rank_keeping_the_fraction(energy, rank):
    choice = choose_ranks(_known_model(), energy=energy, force=True)
    kept = sum(SIGMA_SQUARED[:rank]) / sum(SIGMA_SQUARED)
    for layer in choice.layers[:2]:  # the linear weight and the conv kernel flattened to (out, in·kh·kw)
        assert layer.rank == rank and layer.energy == pytest.approx(kept, abs=1e-12)
        assert layer.energy >= energy - ENERGY_TOLERANCE
        assert rank == 1 or sum(SIGMA_SQUARED[:rank - 1]) / 32 < energy - ENERGY_TOLERANCE


def test_layers_that_would_not_save_weights_stay_dense_unless_forced():
    model = _known_model()
    choice = choose_ranks(model, energy=0.95)  # rank 5 everywhere but the classifier
    assert choice.ranks == {"0": 5} and choice.layers[0].stored == 5 * 66 + 25  # 355 < 6 · 60
    assert choice.layers[1].rank is None  # 6 × 54 at rank 5: 325 >= 324
    assert choice.layers[1].note == "kept dense: rank 5 stores r(n+m)+r² = 325 >= n·m = 324"
    assert choice.layers[2].note == "kept dense: the classifier stays full rank (keep_last_full)"  # 306 >= 288
    assert choice.stored == 355 + 324 + 288 and choice.dense_weights == 360 + 324 + 288
    forced = choose_ranks(model, energy=0.95, force=True)
    assert forced.ranks == {"0": 5, "3": 5, "5": 3}
    assert forced.layers[1].note.startswith("forced: rank 5")
    assert forced.layers[2].note.startswith("forced: the classifier")
    converted = to_lowrank(model, choice.ranks, keep_last_full=False)
    assert isinstance(converted[0], LowRankLayer)
    assert type(converted[3]) is nn.Conv2d and type(converted[5]) is nn.Linear


def _two_spectra() -> nn.Sequential:
    """Two 6 × 60 / 60 × 6 layers, one with a decaying spectrum (σ² 18, 8, 3, 2, 1, 1: energies reached .545,
    .788, .879, .939, .970, 1), one flat (1/6, 2/6, …, 1), and a 3 × 60 classifier kept dense: D = 900."""
    model = nn.Sequential(nn.Linear(60, 6), nn.ReLU(), nn.Linear(6, 60), nn.ReLU(), nn.Linear(60, 3)).double()
    with torch.no_grad():
        model[0].weight.copy_(_with_singular_values(6, 60, [math.sqrt(s) for s in (18, 8, 3, 2, 1, 1)]))
        model[2].weight.copy_(_with_singular_values(60, 6, [1.0] * 6, seed=2))
    return model


@pytest.mark.parametrize(("params", "ranks", "stored"), [
    # rank r stores 66 r + r²: 67, 136, 207, 280, 355, then 432 >= 360 (dense). The rises in the order of the energy
    # reached: flat to 2, 3, 4, decaying to 2 (596 with the classifier's 180), flat to 5 (671), decaying to 3 (742) …
    (0.35, {"0": 1, "2": 1}, 314),       # 315: no rise fits
    (600 / 900, {"0": 2, "2": 4}, 596),  # the flat layer's rise to 5 (671) and the other's to 3 (667) do not fit
    (0.75, {"0": 2, "2": 5}, 671),       # 675: neither 742 nor the flat layer dense (676) fits
    (0.8, {"0": 2}, 676),                # 720: the decaying layer's rise (742) does not fit, the flat layer goes dense
])
def test_params_rises_in_the_order_of_the_energy_reached(params, ranks, stored):
    choice = choose_ranks(_two_spectra(), params=params)
    assert choice.ranks == ranks and choice.stored == stored and choice.dense_weights == 900


def test_fixed_ranks_follow_training_and_count_like_compression_report():
    torch.manual_seed(0)
    model = create("lenet5")
    choice = choose_ranks(model, 0.2)
    assert choice.ranks == {"features.0": 4, "features.3": 10, "classifier.1": 100}  # ceil(0.2 min(n, m))
    assert choice.dense == ["classifier.3"]
    converted = to_lowrank(copy.deepcopy(model), choice.ranks, keep_last_full=False)
    report = compression_report(converted)
    biases = sum(m.bias.numel() for m in converted.modules() if getattr(m, "bias", None) is not None)
    assert report.params - biases == choice.stored and report.dense_params - biases == choice.dense_weights
    named = choose_ranks(model, {"features.3": 5})
    assert named.ranks == {"features.3": 5} and named.layers[0].note == "kept dense: not named in rank"


@pytest.mark.parametrize("params", [0.05, 0.1, 0.3, 0.6])
@pytest.mark.parametrize("force", [False, True])
def test_params_budget_holds_and_no_rank_can_rise_within_it(params, force):
    torch.manual_seed(1)
    model = create("lenet5")
    choice = choose_ranks(model, params=params, force=force)
    budget = params * choice.dense_weights
    assert choice.stored <= budget
    risen = 0
    for layer in choice.layers[:-1]:  # the classifier stays full rank
        if layer.rank is not None and layer.rank < layer.full_rank:
            n, m = layer.shape
            higher = stored_weights(n, m, layer.rank + 1)
            higher = higher if force or higher < n * m else n * m
            assert choice.stored - layer.stored + higher > budget, (layer, choice.stored, budget)
            risen += 1
    assert risen  # every layer could still rise: the budget is what stopped them
    converted = to_lowrank(model, choice.ranks, keep_last_full=False)
    assert sum(isinstance(m, LowRankLayer) for m in converted.modules()) == len(choice.ranks)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"energy": 0.0}, "energy must be a fraction in (0, 1]"),
    ({"energy": 1.5}, "energy must be a fraction in (0, 1]"),
    ({"energy": math.nan}, "energy must be a fraction in (0, 1]"),
    ({"params": 0.0}, "params must be a fraction in (0, 1]"),
    ({"params": 1.2}, "params must be a fraction in (0, 1]"),
    ({}, "give exactly one of rank"),
    ({"rank": 0.2, "params": 0.3}, "got ['rank', 'params']"),
    ({"rank": {"nope": 2}}, "rank names modules that are not nn.Linear/nn.Conv2d layers: ['nope']"),
    ({"rank": 30}, "layer 'features.0': rank must be an int in [1, 20]"),
])
def test_bad_rank_choices_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError) as caught:
        choose_ranks(create("lenet5"), **kwargs)
    assert message in str(caught.value)


def test_a_budget_below_rank_one_everywhere_names_the_smallest_feasible_one():
    model = create("lenet5")
    with pytest.raises(ValueError, match=r"params = 0\.001 is below the smallest feasible budget") as caught:
        choose_ranks(model, params=0.001)
    smallest = float(str(caught.value).split("params in [")[1].split(",")[0])
    assert all(rank == 1 for rank in choose_ranks(model, params=smallest).ranks.values())


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def dense(fmnist, tmp_path_factory) -> dict[str, object]:
    """A small CNN trained here for 2 epochs on 3000 real Fashion-MNIST images, as a model file + state dict."""
    root = tmp_path_factory.mktemp("dense")
    (root / "net.py").write_text(NET)
    namespace: dict[str, object] = {}
    exec(NET, namespace)
    torch.manual_seed(0)
    model = namespace["build"]()
    train, _ = fmnist
    fit(model, train.images[:3000], train.labels[:3000], epochs=2, lr=0.05, batch_size=64, seed=0)
    torch.save(model.state_dict(), root / "dense.pt")
    return {"root": root, "model": model.eval(), "build": namespace["build"],
            "argv": ["compress", "--model-file", f"{root / 'net.py'}:build", "--checkpoint", str(root / "dense.pt")]}


def _compress(dense, out: Path, *extra: str) -> int:
    return main([*dense["argv"], *ARGS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def uninterrupted(dense, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compress") / "run"
    assert _compress(dense, out) == 0
    return out


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_cli_compresses_a_dense_checkpoint_and_writes_the_tables(dense, uninterrupted, fmnist):
    out = uninterrupted
    for name in ("compression.json", "compression.csv", "layers.csv", "compression.md", "model.pt", "dense-eval.json",
                 "eval-dense/result.json", "eval-lowrank/result.json", "finetune/best.pt"):
        assert (out / name).is_file(), name
    record = json.loads((out / "compression.json").read_text())
    assert record["stored_weights"] <= 0.3 * record["dense_weights"]
    assert record["saved_fraction"] == pytest.approx(1 - record["stored_weights"] / record["dense_weights"])
    dense_row, lowrank_row = record["table"]
    assert dense_row["weight_fraction"] == 1 and lowrank_row["weight_fraction"] <= 0.3
    assert record["latency"]["ratio"] == pytest.approx(record["latency"]["lowrank_seconds"]
                                                       / record["latency"]["dense_seconds"])
    assert "| dense" in (out / "compression.md").read_text()
    assert (out / "compression.csv").read_text().splitlines()[0].startswith("model,clean_accuracy,pgd-linf@0.02,")
    for layer in record["layers"]:  # CondLR keeps κ(S) ≤ 1 + τ in every factorised layer
        if layer["rank"] is not None:
            assert layer["kappa_lowrank"] <= 1.1 + 1e-4
    # the numbers re-measured independently: the dense model's and the saved low-rank model's
    _, test = fmnist
    x, y = test.images[:64], test.labels[:64]
    for model, row in ((dense["model"], dense_row), (load_compressed(out / "model.pt", dense["build"]()), lowrank_row)):
        attack = at_eps(lambda eps, m=model: build_attack("pgd-linf", m, eps, steps=5, seed=0))
        result = evaluate(model, (x, y), {"pgd-linf": attack}, [0.0, 0.02], progress=False, sanity=False)
        assert row["clean_accuracy"] == result.clean_accuracy
        assert row["pgd-linf@0.02"] == result.worst_at(0.02).robust_accuracy


def test_the_compressed_model_is_evaluated_and_exported_by_the_other_commands(dense, uninterrupted, tmp_path, capsys):
    """``model.pt`` of compress goes where a checkpoint goes: ``robustlr evaluate`` reads it (with the dense
    architecture's --model-file) with the clean accuracy compress reported, and ``robustlr export`` writes it as
    plain PyTorch."""
    model_file = ["--model-file", f"{dense['root'] / 'net.py'}:build", "--checkpoint", str(uninterrupted / "model.pt")]
    record = json.loads((uninterrupted / "compression.json").read_text())
    n = record["settings"]["eval_n"]
    assert main(["evaluate", *model_file, "--data", "fashion-mnist", "--split", "test", "--n", str(n), "--attack",
                 "fgsm", "--eps", "0.02", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["result"]["clean_accuracy"] == record["table"][1]["clean_accuracy"]
    assert main(["export", *model_file, "--data", "fashion-mnist", "--n", "32", "--out", str(tmp_path / "plain")]) == 0
    exported = json.loads((tmp_path / "plain" / "export.json").read_text())
    assert exported["logits_check"]["max_abs_diff"] <= 1e-5
    capsys.readouterr()


class _Stopper:
    """A batch transform that sends SIGTERM to this process at its ``at``-th call (the trainer stops at the next
    batch boundary after saving its state)."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, model, x, y, context):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return x, y


def test_an_interrupted_compression_resumes_to_the_uninterrupted_result(dense, uninterrupted, tmp_path, monkeypatch,
                                                                      capsys):
    import robustlr.compress.pipeline as pipeline

    real = pipeline.train
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: real(*a, batch_transform=_Stopper(at=9), **k))
    out = tmp_path / "stopped"
    assert _compress(dense, out) == 128 + signal.SIGTERM  # 480 training images: 8 batches, stopped in epoch 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("robustlr: interrupted (training stopped by SIGTERM in epoch 2 after batch 1 of 8")
    assert err.endswith("to continue: run the same command with --resume")
    assert not (out / "compression.json").exists()
    monkeypatch.setattr(pipeline, "train", real)
    assert _compress(dense, out, "--resume") == 0
    assert "reused from" in capsys.readouterr().out
    for name in ("finetune/last.pt", "finetune/best.pt", "model.pt"):
        first, second = (torch.load(path / name, weights_only=True) for path in (out, uninterrupted))
        assert all(torch.equal(first[key], second[key]) for key in first if isinstance(first[key], torch.Tensor)), name
    first, second = (json.loads((path / "compression.json").read_text()) for path in (out, uninterrupted))
    assert _without_timing(first) == _without_timing(second)


def test_a_signal_during_an_evaluation_stops_at_once_and_resuming_redoes_it(dense, uninterrupted, tmp_path,
                                                                          monkeypatch, capsys):
    import robustlr.compress.pipeline as pipeline

    real = pipeline.evaluate_model

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("not reached: the signal raises at once")

    monkeypatch.setattr(pipeline, "evaluate_model", interrupted)
    out = tmp_path / "stopped"
    assert _compress(dense, out) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("robustlr: interrupted (compress stopped by SIGINT while evaluating the dense model")
    assert err.endswith("to continue: run the same command with --resume")
    assert not (out / "dense-eval.json").exists()
    monkeypatch.setattr(pipeline, "evaluate_model", real)
    assert _compress(dense, out, "--resume") == 0
    assert "reused from" not in capsys.readouterr().out
    first, second = (json.loads((path / "compression.json").read_text()) for path in (out, uninterrupted))
    assert _without_timing(first) == _without_timing(second)


def test_bad_inputs_are_one_line_errors_before_anything_is_written(dense, uninterrupted, tmp_path, capsys):
    argv, new = dense["argv"], tmp_path / "new"
    cases = [
        ([*argv, "--rank", "energy:1.5"], "--rank must be 'energy:E' with E a fraction in (0, 1]"),
        ([*argv, "--params", "1.5"], "--params must be a number in (0, 1]"),
        ([*argv, "--params", "0.001"], "--params = 0.001 is below the smallest feasible budget"),
        ([*argv, "--params", "0.3", "--rank", "0.2"], "give exactly one of --rank"),
        ([*argv], "give exactly one of --rank"),
        ([*argv[:3], "--params", "0.3"], "--checkpoint PATH is required"),
        ([*argv, "--params", "0.3", "--attack", "lora-pgd"], "--attack-rank must be given for the low-rank attacks"),
        ([*argv, "--params", "0.3", "--resume"], "--resume needs --out DIR"),
    ]
    for command, message in cases:
        line = cli_error([*command, "--out", str(new)] if "--resume" not in command else command, capsys)
        assert message in line, line
        assert not new.exists()
    line = cli_error([*argv, *ARGS, "--out", str(uninterrupted)], capsys)
    assert "already holds a compression (compress.json); pass resume=True (--resume)" in line
    line = cli_error([*argv, *ARGS, "--out", str(uninterrupted), "--resume", "--tau", "0.2"], capsys)
    assert "tau (stored 0.1, given 0.2)" in line
    line = cli_error([*argv, *ARGS, "--out", str(tmp_path), "--resume"], capsys)
    assert "there is no compression to resume" in line


def test_library_refusals(dense, fmnist, tmp_path):
    train, test = fmnist
    model = dense["model"]
    with pytest.raises(ValueError, match=r"unknown compress settings \['rnak'\]"):
        compress(model, train, test, rnak=0.2, out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"train_options may not set \['lr', 'theta'\]"):
        compress(model, train, test, params=0.3, train_options={"lr": 0.1, "theta": 0.1}, out=tmp_path / "b")
    with pytest.raises(ValueError, match=r"model must be dense: it already has low-rank layers"):
        compress(to_lowrank(dense["build"](), 0.5), train, test, params=0.3, out=tmp_path / "c")
    with pytest.raises(ValueError, match="no layer would be factorised"):
        compress(model, train, test, rank={"0": 8}, out=tmp_path / "d")
    assert not any(tmp_path.iterdir())
