"""Bad inputs to the trainer: options that do not apply to the method, numbers by kind, devices, damaged
checkpoints, sidecars and resume states; and what an interrupted run says."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlr.cli import build_parser, main
from robustlr.models import sidecar_path
from robustlr.train import TrainConfig, TrainingInterrupted, load_trained, train
from robustlr.train.checkpointing import read_resume, save_weights
from robustlr.train.config import config_differences
from robustlr.train.methods import build_model

LENET = {"name": "lenet5", "num_classes": 10, "in_channels": 1, "image_size": 28}


# ------------------------------------------------------------------------------- options of other methods


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"method": "dense", "rank": 0.5}, ["rank", "method='lowrank' or 'condlr'", "rank=0.5", "method='dense'"]),
        ({"method": "orthogonal", "rank": 3}, ["rank", "rank=3", "method='orthogonal'"]),
        ({"method": "dense", "tau": 0.1}, ["tau", "method='condlr'", "tau=0.1", "method='dense'"]),
        ({"method": "lowrank", "tau": 0.5}, ["tau", "method='condlr'", "method='lowrank'"]),
        ({"method": "lowrank", "grad_scale": "exact"}, ["grad_scale", "method='condlr'", "method='lowrank'"]),
        ({"method": "condlr", "theta": 0.1}, ["theta", "needs grad_scale='exact'", "grad_scale='reference'"]),
        ({"method": "condlr", "theta": 0.1, "grad_scale": "reference"}, ["theta", "grad_scale='exact'"]),
        ({"method": "lowrank", "theta": 0.1}, ["theta", "method='condlr'"]),
    ],
)
def test_an_option_of_another_method_is_refused(settings: dict, needles: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        TrainConfig(**settings)
    for needle in needles:
        assert needle in str(error.value)


def test_options_not_given_resolve_per_method_and_condlr_records_what_it_did() -> None:
    condlr = TrainConfig().to_dict()
    assert (condlr["rank"], condlr["tau"], condlr["grad_scale"], condlr["theta"]) == (0.2, 0.1, "reference", None)
    lowrank = TrainConfig(method="lowrank").to_dict()
    assert (lowrank["rank"], lowrank["tau"], lowrank["grad_scale"]) == (0.2, None, None)
    for method in ("dense", "orthogonal"):
        dense = TrainConfig(method=method).to_dict()
        assert (dense["rank"], dense["tau"], dense["grad_scale"]) == (None, None, None)
    adaptive = TrainConfig(grad_scale="exact", theta=0.1)
    assert (adaptive.grad_scale, adaptive.theta) == ("exact", 0.1)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv, "--out", "x"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "dense", "--rank", "0.5"],
         "--rank (the rank of the factorised layers) applies only to --method lowrank or condlr; got --rank 0.5 "
         "with --method dense"),
        (["--method", "lowrank", "--tau", "0.3"], "--tau (the CondLR bound kappa(S) <= 1 + tau) applies only to "
                                                  "--method condlr; got --tau 0.3 with --method lowrank"),
        (["--method", "orthogonal", "--grad-scale", "exact"], "--grad-scale (the CondLR gradient scale of U and V) "
                                                              "applies only to --method condlr"),
        (["--theta", "0.1"], "--theta (rank adaptivity) needs --grad-scale exact"),
        # typed values equal to the per-method defaults are refused too: the parser's defaults are None
        (["--method", "dense", "--rank", "0.2"], "got --rank 0.2 with --method dense"),
        (["--method", "lowrank", "--tau", "0.1"], "got --tau 0.1 with --method lowrank"),
        (["--method", "dense", "--grad-scale", "reference"], "applies only to --method condlr"),
    ],
)
def test_from_args_names_the_command_line_options(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        TrainConfig.from_args(_args(*argv))
    assert message in str(error.value)


def test_from_args_takes_left_out_options_as_not_given() -> None:
    dense = TrainConfig.from_args(_args("--method", "dense"))
    assert (dense.rank, dense.tau, dense.grad_scale) == (None, None, None)
    condlr = TrainConfig.from_args(_args("--rank", "0.5", "--tau", "0.2"))
    assert (condlr.rank, condlr.tau, condlr.grad_scale) == (0.5, 0.2, "reference")
    none_given = argparse.Namespace(method="dense", rank=None, tau=None, grad_scale=None, theta=None, out="x")
    assert TrainConfig.from_args(none_given) == dense  # a parser whose defaults are None gives the same config


def test_the_command_refuses_dense_with_a_rank_before_writing_anything(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    small = ["--train-subset", "300", "--epochs", "1", "--eval-n", "16", "--eval-eps", "0", "--robust-val-n", "0"]
    assert main(["train", "--method", "dense", "--rank", "0.5", *small, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustlr: error: --rank") and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_a_config_recorded_by_an_earlier_version_still_resumes() -> None:
    """Earlier versions recorded rank, tau and grad_scale for every method; such a config.json is read as the
    run it was (those values had no effect) and compares equal to today's config of the same run."""
    for method in ("dense", "lowrank", "orthogonal"):
        today = TrainConfig(method=method, out="runs/x")
        stored = {**today.to_dict(), "rank": today.rank or 0.2, "tau": 0.1, "grad_scale": "reference"}
        assert config_differences(TrainConfig.from_stored(json.loads(json.dumps(stored))), today) == {}
    condlr = TrainConfig(out="runs/x")
    assert TrainConfig.from_stored(condlr.to_dict()) == condlr


# ---------------------------------------------------------------------------------------- numbers by kind


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers() -> None:
    config = TrainConfig(rank=np.int64(3), tau=np.float32(0.5), grad_scale="exact", theta=np.float32(0.25),
                         lr=np.float32(0.5), momentum=np.float64(0.3), epochs=np.int64(2), batch_size=np.int32(64))
    assert (config.rank, config.tau, config.theta, config.lr, config.epochs) == (3, 0.5, 0.25, 0.5, 2)
    assert json.loads(json.dumps(config.to_dict()))["tau"] == 0.5
    assert TrainConfig(method="lowrank", rank=np.float32(0.5)).rank == 0.5


@pytest.mark.parametrize(("key", "value"), [("epochs", True), ("tau", False), ("rank", True), ("lr", True)])
def test_bools_are_not_numbers(key: str, value: bool) -> None:
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{key: value})


# ------------------------------------------------------------------------------------ files and devices


def _checkpoint(tmp_path: Path, method: str = "condlr") -> Path:
    config = TrainConfig(method=method, out=str(tmp_path))
    torch.manual_seed(0)
    model = build_model(config, LENET)
    path = tmp_path / "best.pt"
    save_weights(path, model, config, {"epoch": 1})
    return path


def test_load_trained_refuses_a_device_this_machine_lacks_before_reading(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"device must be one this machine has \(cpu.*got 'cuda:99'"):
        load_trained(path, device="cuda:99")
    with pytest.raises(ValueError, match="device must be one this machine has"):
        load_trained(tmp_path / "absent.pt", device="meta")
    model, meta = load_trained(path, device=torch.device("cpu"))
    assert meta["epoch"] == 1 and not model.training


def test_load_trained_reads_a_checkpoint_of_an_earlier_version(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, "dense")
    sidecar = sidecar_path(path)
    meta = json.loads(sidecar.read_text())
    meta["train_config"].update(rank=0.2, tau=0.1, grad_scale="reference")  # as earlier versions recorded
    sidecar.write_text(json.dumps(meta))
    model, _ = load_trained(path)
    assert type(model.features[0]) is torch.nn.Conv2d


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (lambda path: path.write_bytes(b""), ["checkpoint", "best.pt'", "is empty (0 bytes)"]),
        (lambda path: path.write_bytes(path.read_bytes()[:1000]), ["checkpoint", "is not a torch file (truncated"]),
        (lambda path: sidecar_path(path).write_text('{"train_config": {'), ["sidecar", "best.pt.json'",
                                                                             "is not valid JSON (line 1 column"]),
        (lambda path: sidecar_path(path).write_text("[]"), ["sidecar", "expected a JSON object, got a list"]),
        (lambda path: sidecar_path(path).write_text('{"train_config": "condlr", "model_args": {}}'),
         ["sidecar", "no train_config object"]),
        (lambda path: sidecar_path(path).write_text('{"train_config": {"method": "sparse"}, "model_args": {}}'),
         ["sidecar", "train_config: method must be one of"]),
        (lambda path: sidecar_path(path).write_text('{"train_config": {}, "model_args": {"name": "lenet5", "x": 1}}'),
         ["sidecar", "model_args", "do not build a model"]),
    ],
)
def test_a_damaged_checkpoint_or_sidecar_names_the_file_and_what_is_wrong(tmp_path: Path, damage, needles) -> None:
    path = _checkpoint(tmp_path)
    damage(path)
    with pytest.raises(ValueError) as error:
        load_trained(path)
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty (0 bytes)"),
        (b"\x00" * 4096, "is not a torch file (truncated or corrupt"),
        (b"PK\x03\x04" + b"\x00" * 200, "is not a torch file (truncated or corrupt"),
    ],
)
def test_a_damaged_resume_state_names_the_file_and_what_is_wrong(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "resume.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_resume(path)
    assert str(error.value).startswith(f"resume state {str(path)!r} ") and needle in str(error.value)


def test_a_resume_state_missing_a_part_is_named(tmp_path: Path) -> None:
    path = tmp_path / "resume.pt"
    torch.save({"format": 2, "config": {}}, path)
    with pytest.raises(ValueError, match=r"resume state .* lacks \['progress', 'model'"):
        read_resume(path)


# ---------------------------------------------------------------------------------------- interruption


def test_an_interruption_says_what_happened_and_where_the_state_is(fmnist, tmp_path: Path) -> None:
    def stop_at_once(model, x, y, context):
        os.kill(os.getpid(), signal.SIGINT)
        return x, y

    out = tmp_path / "run"
    config = TrainConfig(method="dense", train_subset=300, epochs=1, batch_size=100, eval_n=16, eval_eps=(0.0,),
                         eval_steps=1, robust_val_n=0, out=str(out))
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, progress=False, batch_transform=stop_at_once)
    stop = caught.value
    assert str(stop) == (f"training stopped by SIGINT in epoch 1 after batch 1 of 3; the resumable state is saved in "
                         f"{str(out / 'resume.pt')!r}")
    assert stop.signum == signal.SIGINT and stop.path == out / "resume.pt"
    assert read_resume(stop.path)["progress"]["batch"] == 1
