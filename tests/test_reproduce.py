"""Experiment configs: every config validates, its smallest variant runs end to end, results.md regenerates."""

from __future__ import annotations

import json

import pytest

from robustlr.cli import main
from robustlr.reproduce import available, load_experiment
from robustlr.reproduce.results import write_results
from robustlr.train import TrainConfig


@pytest.mark.parametrize("name", available())
def test_every_config_validates(name, tmp_path):
    for smallest in (False, True):
        exp = load_experiment(name, smallest=smallest)
        assert exp.name == name and exp.runs
        for run in exp.runs:
            TrainConfig.from_dict({**{k: v for k, v in run.items() if k != "id"}, "out": str(tmp_path / run["id"])})


def test_smallest_condlr_table_runs_resumes_and_tabulates(fmnist, tmp_path, capsys):
    out = tmp_path / "ct"
    only = ["--only", "dense", "--only", "lowrank-r0.2", "--only", "condlr-tau0.1-r0.2"]
    assert main(["reproduce", "condlr-table", "--smallest", "--out", str(out), "--no-progress", *only]) == 0
    doc = json.loads((out / "table.json").read_text())
    rows = {r["run"]: r for r in doc["rows"]}
    assert set(rows) == {"dense", "lowrank-r0.2", "condlr-tau0.1-r0.2"} and doc["runs_expected"] == 10
    assert rows["condlr-tau0.1-r0.2"]["kappa_max"] <= 1.1 + 1e-5
    assert rows["dense"]["param_reduction"] == 0 and rows["condlr-tau0.1-r0.2"]["param_reduction"] > 0.5
    assert all(r["pgd-linf@0.05"] <= r["clean"] for r in doc["rows"])
    assert (out / "pgd-linf.png").read_bytes().startswith(b"\x89PNG")
    # finished runs are skipped: a second invocation does not train again
    mtime = (out / "dense" / "last.pt").stat().st_mtime_ns
    assert main(["reproduce", "condlr-table", "--smallest", "--out", str(out), "--no-progress", "--only", "dense"]) == 0
    assert (out / "dense" / "last.pt").stat().st_mtime_ns == mtime
    # smallest tables are never published
    with pytest.raises(ValueError, match="runs_dir"):
        write_results(tmp_path, tmp_path / "docs" / "results.md")
    doc["smallest"] = False
    (out / "table.json").write_text(json.dumps(doc))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "condlr-table.md").write_text("Reading: the numbers say X.\n")
    path = write_results(tmp_path, tmp_path / "docs" / "results.md", notes)
    text = path.read_text()
    assert "robustlr reproduce condlr-table" in text and "condlr-tau0.1-r0.2" in text and "Reading: the numbers" in text
    assert (tmp_path / "docs" / "figures" / "condlr-table-pgd-linf.png").is_file()


def test_bad_experiment_names(capsys):
    assert main(["reproduce", "no-such-table"]) == 2
    assert "condlr-table" in capsys.readouterr().err
    assert main(["reproduce", "condlr-table", "--only", "nope", "--smallest", "--no-progress", "--out", "/tmp/x-none"]) == 2
