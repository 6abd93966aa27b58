"""What evaluate / attack / spectrum load: each bad input is one line naming the option, before any work."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from torch import nn

from conftest import cli_error
from robustlr.cli import build_parser, main
from robustlr.models import create, load_model_file, save_checkpoint

COMMANDS = ["evaluate", "attack", "spectrum"]
FAST = ["--data", "digits", "--n", "8", "--no-progress"]  # 8x8 images, 10 classes: loads in a blink


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: what is checked first must fail before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the bad input was refused")

    monkeypatch.setattr("robustlr.cli.setup.load_dataset", refuse)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(
        """
        from torch import nn

        def for_28():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

        def three_classes():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

        def flat():
            return nn.Flatten(0)

        def needs(width):
            return nn.Linear(width, 10)

        def raises():
            raise RuntimeError("weights are on another machine")
        """
    ))
    return path


# 1. --device: one check, before anything is loaded

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device", ["meta", "cuda:99"])
def test_device_this_machine_lacks_is_refused_before_loading(command, device, no_data, tmp_path, capsys):
    line = cli_error([command, "--model", "mlp", "--device", device, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert "--device must be one this machine has" in line and repr(device) in line
    assert not (tmp_path / "o").exists()


# 2. the model must take the data

def test_checkpoint_for_28x28_images_on_8x8_data(tmp_path, capsys):
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, create("lenet5", num_classes=10), {})
    line = cli_error(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert f"the model (--checkpoint {path}) does not accept inputs of shape (1, 8, 8) from --data digits" in line
    assert "RuntimeError: " in line  # the model's own reason
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("for_28", "does not accept inputs of shape (1, 8, 8) from --data digits: RuntimeError: mat1 and mat2"),
        ("three_classes", "returns 3 logits per image but --data digits has 10 classes"),
        ("flat", "returns shape (128,), not logits of shape (2, classes)"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "spectrum"])
def test_model_file_that_does_not_fit_the_data(command, factory, needle, user_file, tmp_path, capsys):
    spec = f"{user_file}:{factory}"
    line = cli_error([command, "--model-file", spec, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert f"the model (--model-file {spec})" in line and needle in line


def test_fit_check_restores_every_submodule_mode(user_file):
    from argparse import Namespace

    from robustlr.cli.setup import check_model_fits
    from robustlr.data import load_dataset

    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))
    model.train()
    model[1].eval()  # a deliberate mixture
    check_model_fits(model, load_dataset("digits", "test"), Namespace(data="digits", model=None,
                                                                      model_file="x.py:f", checkpoint=None))
    assert [m.training for m in model.modules()] == [True, True, False, True]


# 3. --model-file problems: one line naming the file, the factory and the original error

@pytest.mark.parametrize(
    ("source", "factory", "needles"),
    [
        ("def f(:\n", "f", ["importing", "SyntaxError: ", "line 1"]),
        ("x = 1\nraise ImportError('no module named mylayers')\n", "f", ["importing", "ImportError: no module named mylayers (line 2)"]),
        (None, "needs", ["cannot call needs()", "missing a required argument: 'width'"]),
        (None, "raises", ["raises() raised RuntimeError: weights are on another machine (line 17)"]),
    ],
)
def test_model_file_problems_are_one_line(source, factory, needles, user_file, tmp_path, capsys):
    if source is not None:
        user_file.write_text(source)
    spec = f"{user_file}:{factory}"
    line = cli_error(["evaluate", "--model-file", spec, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert line.startswith(f"robustlr: error: --model-file {spec!r}: ")
    for needle in needles:
        assert needle in line


def test_load_model_file_wraps_the_users_errors_and_chains_them(user_file):
    spec = f"{user_file}:raises"
    with pytest.raises(ValueError) as error:
        load_model_file(spec)
    assert str(error.value).startswith(f"spec {spec!r}: ")
    assert isinstance(error.value.__cause__, RuntimeError)
    user_file.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ValueError, match="SystemExit"):
        load_model_file(spec)


# 4. spectrum: one budget per norm, from the option of the attack's norm, never 0

def test_spectrum_takes_each_norms_budget_from_its_option(monkeypatch, tmp_path, capsys):
    import robustlr.cli.spectrum_cmd as spectrum_cmd

    seen = {}
    real = spectrum_cmd.perturbation_spectrum

    def spy(model, x, y, attacks, **kwargs):
        seen.update({label: atk.eps for label, atk in attacks.items()})
        return real(model, x, y, attacks, **kwargs)

    monkeypatch.setattr(spectrum_cmd, "perturbation_spectrum", spy)
    out = tmp_path / "spec"
    assert main(["spectrum", "--model", "mlp", "--attack", "pgd-linf", "--attack", "pgd-l2", "--eps-linf", "0.03",
                 "--eps", "0.7", "--steps", "1", "--out", str(out), *FAST]) == 0
    assert seen == {"pgd-linf": 0.03, "pgd-l2": 0.7}
    assert json.loads((out / "spectrum.json").read_text())["eps"] == {"linf": 0.03, "l2": 0.7}


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--eps", "0"], "--eps must be > 0 for a spectrum: a zero perturbation has no spectrum"),
        (["--attack", "pgd-linf", "--eps-linf", "0"], "--eps-linf must be > 0 for a spectrum"),
        (["--eps-l2", "0.5", "1"], "--eps-l2 takes one budget for a spectrum (l2 attacks), got [0.5, 1.0]"),
    ],
)
def test_spectrum_budget_refused_before_anything_is_created(options, needle, tmp_path, capsys):
    out = tmp_path / "spec"
    assert needle in cli_error(["spectrum", "--model", "mlp", *options, "--out", str(out), *FAST], capsys)
    assert not out.exists()


# 6. Ctrl-C says what to do

@pytest.mark.parametrize("command", COMMANDS)
def test_commands_say_how_to_continue_after_an_interrupt(command):
    args = build_parser().parse_args([command, "--model", "mlp"])
    assert "rerun the command" in args.continue_hint and "resumable" in args.continue_hint


# 7, 8. messages name the command line's options, not the library's arguments

@pytest.mark.parametrize(
    ("options", "start"),
    [
        (["--checkpoint", "/nonexistent/x.pt"], "--checkpoint must be an existing checkpoint file, got '/nonexistent/x.pt'"),
        (["--model", "mlp", "--data", "nosuch"], "--data must be one of "),
        (["--model", "nosuch"], "--model must be one of "),
        (["--model", "lenet5"], "--model lenet5 on --data digits (images of shape (1, 8, 8)): image_size must be"),
        (["--model", "mlp", "--attack", "lora-pgd", "--rank", "40"], "--rank must be an int in [1, 8]"),
        (["--model", "mlp", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--model", "mlp", "--attack", "fgsm", "--eps", "1e39"], "--eps must be at most 3.40282e+38 (the largest finite float32"),
        (["--model", "mlp", "--attack", "pgd-l2", "--eps-l2", "1e39"], "--eps-l2 must be at most 9.22337e+18"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "spectrum"])
def test_errors_name_the_options(command, options, start, tmp_path, capsys):
    line = cli_error([command, *FAST, *options, "--out", str(tmp_path / "o")], capsys)
    assert line.startswith(f"robustlr: error: {start}"), line
    assert not (tmp_path / "o").exists()


def test_checkpoint_without_sidecar_asks_for_the_architecture(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, create("mlp", num_classes=10, image_size=8), {})
    path.with_name("bare.pt.json").unlink()
    line = cli_error(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert f"--checkpoint {path}: its sidecar bare.pt.json is missing" in line
    assert "--model NAME or --model-file" in line and "model=" not in line


def test_steps_of_spectrum_named(tmp_path, capsys):
    line = cli_error(["spectrum", "--model", "mlp", "--steps", "0", "--out", str(tmp_path / "o"), *FAST], capsys)
    assert "--steps must be an integer >= 1; got 0" in line
