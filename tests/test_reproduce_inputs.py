"""Bad inputs of ``robustlr reproduce`` and ``robustlr results``: a malformed ``table.json`` (or record) is an
error naming the file; a directory of another experiment (or of no experiment) is refused before anything is
written; a run whose ``last.pt`` is empty is not reused."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from robustlr.cli import main
from robustlr.reproduce import configs, reproduce
from robustlr.reproduce.attack_cells import CELL_SETTINGS, read_cell
from robustlr.reproduce.results import write_results
from robustlr.reproduce.training import read_status

_TABLE = {"experiment": "x", "version": 1, "description": "d", "device": "CPU", "robustlr_version": "0",
          "torch_version": "2", "finished": "today", "runs_expected": 1, "rows": [], "smallest": False}


@pytest.mark.parametrize("text, problem", [
    ("{}", "lacks the key(s) ['experiment', 'version', 'description'"),
    ("[]", ": expected a JSON object, got a list"),
    ('{"rows": [', "is not valid JSON (line 1 column 11"),
    ("", "is empty (0 bytes)"),
    (json.dumps({k: v for k, v in _TABLE.items() if k != "rows"}), "lacks the key(s) ['rows']"),
    (json.dumps({**_TABLE, "rows": {"a": 1}}), ": rows must be a JSON list, got {'a': 1}"),
    (json.dumps({**_TABLE, "rows": [1]}), ": rows must hold objects only, got 1"),
    (json.dumps({**_TABLE, "version": "1"}), ": version must be a JSON int, got '1'"),
    (json.dumps({**_TABLE, "figures": ["../../x.png"]}), ": figures must name files next to it; '../../x.png'"),
])
def test_a_malformed_table_json_is_an_error_naming_the_file(tmp_path, capsys, text, problem):
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "table.json").write_text(json.dumps({**_TABLE, "experiment": "good"}))
    table = runs / "bad" / "table.json"
    table.parent.mkdir()
    table.write_text(text)
    out = tmp_path / "docs" / "results.md"
    with pytest.raises(ValueError) as error:
        write_results(runs, out)
    assert f"table {str(table)!r}" in str(error.value) and problem in str(error.value)
    assert main(["results", "--runs", str(runs), "--out", str(out), "--notes", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustlr: error: ") and err.count("\n") == 1 and str(table) in err and problem in err
    assert not (tmp_path / "docs").exists()  # nothing is written


def test_a_malformed_record_or_status_is_redone_and_said(tmp_path, capsys):
    settings = {key: 1 for key in CELL_SETTINGS}
    for text in ("{", "[]", json.dumps({"settings": settings})):  # the last lacks the results its rows read
        (tmp_path / "cell.json").write_text(text)
        assert read_cell(tmp_path / "cell.json", settings) is None
        assert str(tmp_path / "cell.json") in capsys.readouterr().err
    (tmp_path / "status.json").write_text('{"status": "failed"}')
    assert read_status(tmp_path / "status.json") is None
    assert "lacks the key(s) ['error']" in capsys.readouterr().err


_RUN = """
    name = "{name}"
    kind = "train-grid"
    version = 1
    description = "one small run"

    [defaults]
    model = "lenet5"
    data = "fashion-mnist"
    method = "dense"
    epochs = 1
    train_subset = 200
    eval_n = 8
    eval_eps = [0.0]
    eval_steps = 1

    [smallest]
    train_subset = 100

    [[runs]]
    id = "{run}"
"""


@pytest.fixture
def experiments(tmp_path, monkeypatch):
    """Two tiny experiments, ``one`` (run ``a``) and ``two`` (run ``b``), in a config directory of their own."""
    directory = tmp_path / "experiments"
    directory.mkdir()
    for name, run in (("one", "a"), ("two", "b")):
        (directory / f"{name}.toml").write_text(textwrap.dedent(_RUN.format(name=name, run=run)))
    monkeypatch.setattr(configs, "experiments_dir", lambda: directory)
    return directory


def _snapshot(out):
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_a_directory_of_another_experiment_is_refused_and_left_as_it_was(experiments, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("robustlr.reproduce.training.missing_data", lambda config: "no data in this test")
    out = tmp_path / "out"
    assert main(["reproduce", "one", "--out", str(out), "--no-progress"]) == 0  # its run is skipped: no training
    assert json.loads((out / "experiment.json").read_text()) == {"experiment": "one", "smallest": False}
    before = _snapshot(out)
    capsys.readouterr()
    for argv, found in ((["two"], "'one' (experiment.json)"), (["one", "--smallest"], "'one' (experiment.json)")):
        assert main(["reproduce", *argv, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {str(out)!r} holds experiment {found}, asked for " in err
        assert "(stored, wanted); allowed: a new or empty directory, or the directory of" in err
        assert _snapshot(out) == before  # nothing overwritten, nothing added
    (out / "experiment.json").unlink()  # a directory from before experiment.json: identified by its table.json
    with pytest.raises(ValueError, match=r"holds experiment 'one' \(table.json\), asked for two"):
        reproduce("two", out, progress=False)
    assert not (out / "experiment.json").exists()
    assert reproduce("one", out, progress=False)["experiment"] == "one"  # the same experiment: adopted, resumed
    assert (out / "experiment.json").is_file()
    (out / "experiment.json").write_text("[]")
    with pytest.raises(ValueError, match=r"experiment record '.*experiment.json': expected a JSON object, got a list"):
        reproduce("one", out, progress=False)


def test_a_directory_of_no_experiment_is_refused(experiments, tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "a").mkdir(parents=True)  # a directory named after a run is what an interrupted invocation leaves
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--out '.*foreign' is not the directory of an experiment \(it holds "
                                         r"\['notes.txt'\] and no experiment.json\)"):
        reproduce("one", foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["a", "notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out must be a directory for experiment one; '.*file' is a file"):
        reproduce("one", tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="--only must name runs of one"):  # checked before the directory is claimed
        reproduce("one", tmp_path / "new", only=["zz"], progress=False)
    assert not (tmp_path / "new").exists()


def test_a_run_whose_last_pt_is_empty_is_trained_again(experiments, fmnist, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "one", "--smallest", "--out", str(out), "--no-progress"]) == 0
    (out / "a" / "last.pt").write_bytes(b"")
    assert main(["reproduce", "one", "--smallest", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "last.pt' is empty (0 bytes)" in err and "training it again from scratch" in err
    assert torch.load(out / "a" / "last.pt", weights_only=True) and (out / "a" / "set-aside-1" / "last.pt").is_file()
    doc = json.loads((out / "table.json").read_text())
    assert doc["runs"] == {"finished": 1} and doc["rows"][0]["status"] == "finished"
    (out / "a" / "summary.json").write_text('{"epochs_completed": 1}')  # an object, but not what training writes
    assert main(["reproduce", "one", "--smallest", "--out", str(out), "--no-progress"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("robustlr: error: run summary '") and "lacks the key(s) ['evaluation', 'final_metrics']" in last
