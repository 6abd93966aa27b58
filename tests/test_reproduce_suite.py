"""``kind = "suite-table"`` (experiments/lorapgd-vs-autoattack.toml): the smallest variant runs end to end from the
command line with the original AutoAttack (pyautoattack), resumes without recomputing a cell, and renders its
reading into results.md; the reading's arithmetic on given rows; bad settings are refused."""

from __future__ import annotations

import json
import shutil

import pytest

from robustlr.cli import main
from robustlr.reproduce import configs, load_experiment
from robustlr.reproduce import suite_table
from robustlr.reproduce.results import write_results
from robustlr.reproduce.suite_table import COMPARABLE_POINTS, suite_reading, suite_table_rows

from conftest import require

NAME = "lorapgd-vs-autoattack"
ATTACKS = ["pgd-l2", "lora-pgd", "lora-apgd", "apgd-ce", "autoattack", "pyautoattack"]


@pytest.fixture(scope="module")
def smallest(fmnist, tmp_path_factory):
    """The smallest variant (both runs: standard and PGD-trained), run once from the command line."""
    require("pyautoattack", "pip install --no-deps pyautoattack (the Makefile does)")
    out = tmp_path_factory.mktemp("suite") / NAME
    assert main(["reproduce", NAME, "--smallest", "--out", str(out), "--no-progress"]) == 0
    return out


def test_smallest_runs_every_attack_from_the_command_line(smallest):
    doc = json.loads((smallest / "table.json").read_text())
    assert doc["kind"] == "suite-table" and doc["failed"] == 0 and doc["runs"] == {"finished": 2}
    rows = doc["rows"]
    assert [(r["model"], r["attack"]) for r in rows] == [(m, a) for m in ("standard", "pgd-l2") for a in ATTACKS]
    assert {r["status"] for r in rows} == {"ok"}
    exp = load_experiment(NAME, smallest=True)
    assert {r["eps"] for r in rows} == set(exp.settings["eps"]) and {r["n"] for r in rows} == {exp.settings["n"]}
    for row in rows:
        assert 0 <= row["robust_accuracy"] <= row["clean"] <= 1 and row["seconds"] >= 0
    steps = {r["attack"]: r["steps"] for r in rows}
    assert steps["lora-apgd"] == steps["apgd-ce"] == exp.settings["apgd_steps"]
    assert steps["lora-pgd"] == steps["pgd-l2"] == exp.settings["steps"] and rows[1]["rank"] == 3
    record = json.loads((smallest / "standard" / "suite" / "autoattack_eps3.json").read_text())
    assert [s["attack"] for s in record["stages"]] == ["apgd-ce-l2", "apgd-t-l2", "fab-t-l2", "square-l2"]
    assert record["seconds"] == sum(s["seconds"] for s in record["stages"])


def test_a_second_invocation_recomputes_nothing(smallest, monkeypatch):
    cells = sorted(smallest.glob("*/suite/*.json"))
    assert len(cells) == 12
    stamps = [p.stat().st_mtime_ns for p in cells]

    def refuse(*args, **kwargs):
        raise AssertionError("a stored cell was computed again")

    monkeypatch.setattr(suite_table, "run_cell", refuse)
    monkeypatch.setattr(suite_table, "_run_suite_cell", refuse)
    assert main(["reproduce", NAME, "--smallest", "--out", str(smallest), "--no-progress"]) == 0
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    assert json.loads((smallest / "table.json").read_text())["failed"] == 0


def test_results_md_renders_the_reading_from_the_table(smallest, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(smallest, runs / NAME)
    doc = json.loads((runs / NAME / "table.json").read_text())
    doc["smallest"] = False  # smallest tables are never published as they are
    (runs / NAME / "table.json").write_text(json.dumps(doc))
    text = write_results(runs, tmp_path / "docs" / "results.md", tmp_path / "no-notes").read_text()
    assert f"## {NAME} (config version 1)" in text
    assert suite_reading(doc["rows"]) in text and "| standard | 3 |" in text and "| pgd-l2 | 3 |" in text
    assert "Comparable to AutoAttack at a fraction of the time\" " in text


def test_without_pyautoattack_the_original_is_a_skipped_row(smallest, monkeypatch):
    monkeypatch.setattr(suite_table, "_peer_installed", lambda: False)
    rows = suite_table_rows(load_experiment(NAME, smallest=True), smallest)
    assert [r["attack"] for r in rows] == ATTACKS * 2
    for row in (rows[5], rows[11]):
        assert row["status"] == "skipped" and "pyautoattack is not installed" in row["error"]
    assert "(robustlr)" in suite_reading(rows)


def _row(attack, robust, seconds, model="m", eps=1.0, init=None, rank=None):
    return {"model": model, "attack": attack, "init": init, "rank": rank, "eps": eps, "robust_accuracy": robust,
            "seconds": seconds, "status": "ok"}


def test_reading_states_points_and_time_ratios_against_the_original():
    rows = [_row("pyautoattack", 0.500, 100.0), _row("autoattack", 0.502, 80.0),
            _row("lora-pgd", 0.512, 5.0, init="lora", rank=3), _row("lora-pgd", 0.508, 6.0, init="svd", rank=3),
            _row("lora-apgd", 0.505, 50.0, rank=3), _row("apgd-ce", 0.503, 20.0), _row("pgd-l2", 0.520, 4.0),
            _row("pyautoattack", 0.300, 100.0, eps=2.0), _row("lora-pgd", 0.350, 5.0, eps=2.0, init="lora", rank=3)]
    text = suite_reading(rows)
    # ε = 1: the best LoRa-PGD (svd, 0.508) is +0.8 points at 6/100 of the time: comparable; ε = 2: +5.0, not
    assert "| m | 1 | 0.500 (100 s) | 0.502 (80 s) | LoRa-PGD svd r=3: 0.508 | +0.8 | 0.060 | LoRa-APGD r=3 | +0.5 " \
           "| 0.500 | +0.3 | +2.0 |" in text
    assert "| m | 2 | 0.300 (100 s) | — | LoRa-PGD lora r=3: 0.350 | +5.0 | 0.050 | — |" in text
    assert "holds only in part here" in text and "in 1 of 2 (model, ε) cells" in text
    assert "+0.8 to +5.0 points" in text and "0.050–0.060 of its time" in text
    assert COMPARABLE_POINTS == 1.0
    comparable = [r for r in rows if r["eps"] == 1.0]
    assert "\" holds here" in suite_reading(comparable)
    assert "does not hold here" in suite_reading([r for r in rows if r["eps"] == 2.0])


def _config(tmp_path, text):
    for name in ("lorapgd-table", NAME):
        shutil.copy(configs.experiments_dir() / f"{name}.toml", tmp_path / f"{name}.toml")
    path = tmp_path / f"{NAME}.toml"
    path.write_text(path.read_text() + text)
    return tmp_path


@pytest.mark.parametrize(("extra", "match"), [
    ("\n[suite.extra]\nx = 1\n", r"suite has unknown key\(s\) \['extra'\]"),
])
def test_bad_settings_are_refused(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        load_experiment(NAME, directory=_config(tmp_path, extra))


@pytest.mark.parametrize(("key", "value", "match"), [
    ("apgd_steps", "0", "suite.apgd_steps must be an integer >= 1"), ("eps", "[]", "suite.eps must be a non-empty"),
    ("ranks", "[0]", "suite.ranks"), ("inits", '["fgsm"]', "suite.inits"), ("checkpoint", '"x"', "suite.checkpoint"),
])
def test_bad_values_are_refused(tmp_path, key, value, match):
    text = (configs.experiments_dir() / f"{NAME}.toml").read_text()
    start = text.index("[suite]")
    head, tail = text[:start], text[start:]
    lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in tail.splitlines()]
    for name in ("lorapgd-table",):
        shutil.copy(configs.experiments_dir() / f"{name}.toml", tmp_path / f"{name}.toml")
    (tmp_path / f"{NAME}.toml").write_text(head + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        load_experiment(NAME, directory=tmp_path)
