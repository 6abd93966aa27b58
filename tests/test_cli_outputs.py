"""--out of evaluate / attack / spectrum: checked before any work, never mixed with an earlier run's files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from conftest import cli_error
from robustlr.cli import main
from robustlr.cli.outputs import MARKER, check_out

FAST = ["--model", "mlp", "--data", "digits", "--n", "8", "--steps", "1", "--no-progress"]


@pytest.fixture
def no_work(monkeypatch):
    """The attacks never run: a bad --out must be refused before them."""
    def refuse(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr("robustlr.cli.evaluate_cmd.evaluate", refuse)
    monkeypatch.setattr("robustlr.cli.spectrum_cmd.perturbation_spectrum", refuse)


@pytest.mark.parametrize("command", ["evaluate", "attack", "spectrum"])
def test_out_that_is_a_file_is_refused_before_any_work(command, no_work, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert f"--out {target} is a file, not a directory" in cli_error([command, *FAST, "--out", str(target)], capsys)
    under = target / "sub"
    assert f"--out {under}: cannot create it, {target} is a file" in cli_error(
        [command, *FAST, "--out", str(under)], capsys)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["evaluate", "spectrum"])
def test_foreign_non_empty_directory_is_refused_and_left_alone(command, no_work, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = cli_error([command, *FAST, "--out", str(out)], capsys)
    assert f"--out {out} is not empty and was not written by robustlr {command}" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_rerun_replaces_exactly_the_earlier_output(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["attack", *FAST, "--attack", "fgsm", "--attack", "fgm-l2", "--eps", "0.1", "--out", str(out)]) == 0
    assert {"l2", "linf", "adversarial", MARKER} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["attack", *FAST, "--attack", "fgsm", "--eps", "0.2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"robustlr: --out {out}: replacing the earlier `robustlr attack` output (adversarial/, l2/, linf/)" in err
    names = {p.name for p in out.iterdir()}
    assert "l2" not in names and "linf" not in names and "result.json" in names
    assert [p.name for p in (out / "adversarial").iterdir()] == ["fgsm_eps0.2.pt"]
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "attack" and marker["complete"]
    assert "adversarial/" in marker["written"] and "result.json" in marker["written"]


def test_output_of_another_command_or_with_added_files_is_refused(tmp_path, capsys):
    out = tmp_path / "spec"
    assert main(["spectrum", *FAST, "--out", str(out)]) == 0
    line = cli_error(["evaluate", *FAST, "--out", str(out)], capsys)
    assert "holds the output of robustlr spectrum, not of robustlr evaluate" in line
    (out / "later.txt").write_text("added by hand")
    line = cli_error(["spectrum", *FAST, "--out", str(out)], capsys)
    assert "holds files the earlier robustlr spectrum did not write (later.txt)" in line
    assert (out / "later.txt").exists() and (out / "spectrum.json").exists()


def test_unfinished_run_is_replaced_whole(tmp_path, capsys):
    out = tmp_path / "cut"
    output = check_out(argparse.Namespace(out=str(out)), "evaluate")
    output.create()
    (out / "linf").mkdir()
    (out / "linf" / "result.json").write_text("{}")  # then Ctrl-C: no finish()
    assert main(["evaluate", *FAST, "--attack", "fgm-l2", "--eps", "0.5", "--out", str(out)]) == 0
    assert "replacing the earlier `robustlr evaluate` output (linf/)" in capsys.readouterr().err
    assert not (out / "linf").exists() and (out / "result.json").exists()


def test_default_out_is_a_new_directory_each_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = check_out(argparse.Namespace(out=None), "spectrum").create()
    second = check_out(argparse.Namespace(out=None), "spectrum").create()
    assert first != second and first.parent == second.parent == Path("runs")
    assert json.loads((first / MARKER).read_text()) == {"command": "spectrum", "complete": False, "written": []}
