"""robustlr.report: files of write_report, figures, tables, atomic writes."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustlr
from robustlr.attacks import FGSM
from robustlr.evaluate import EvaluationResult, RobustnessWarning, at_eps, evaluate
from robustlr.report import (
    atomic_write_text,
    format_table,
    markdown_table,
    plot_energy_curves,
    plot_spectrum_shift,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS_GRID = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    attacks = {
        "fgsm-l2": at_eps(lambda e: FGSM(model, e, "l2")),
        "lora-pgd r=1": at_eps(lambda e: FGSM(model, e, "linf")),  # a name with a space and '='
        "identity | fixed": lambda x, y: x,  # a '|' that Markdown must escape
    }
    with pytest.warns(RobustnessWarning, match="L2 and L∞ budgets were not merged"):
        return evaluate(model, (x, y), attacks, EPS_GRID, batch_size=5, progress=False, sanity=False)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_report_files(result, tmp_path):
    out = tmp_path / "nested" / "report"
    paths = write_report(result, out, title="test run", extra={"model": "linear", "seed": 0})
    assert set(paths) == {"json", "csv", "markdown", "robust_accuracy"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left

    doc = json.loads(paths["json"].read_text())
    assert doc["result"] == json.loads(json.dumps(result.to_dict()))
    assert doc["result"]["clean_accuracy"] == result.clean_accuracy
    assert doc["robustlr_version"] == robustlr.__version__ and doc["torch_version"] == torch.__version__
    assert doc["device"] == "cpu" and doc["title"] == "test run" and doc["extra"] == {"model": "linear", "seed": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", doc["timestamp"])

    with paths["csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(EPS_GRID) + 1
    assert [(r["attack"], r["eps"]) for r in rows[:3]] == [("fgsm-l2", str(e)) for e in EPS_GRID]
    assert rows[-1]["attack"] == "identity | fixed" and rows[-1]["eps"] == "" and rows[-1]["kind"] == "fixed"
    for row, expected in zip(rows, result.rows()):
        assert float(row["robust_accuracy"]) == expected["robust_accuracy"]

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# test run\n")
    assert re.search(r"^\| attack\s+\|\s+ε \| norm \| robust acc \| worst case \|", markdown, re.M)
    assert "identity \\| fixed" in markdown
    assert "![Robust accuracy vs ε](robust_accuracy.png)" in markdown
    # the fixture mixes an L2 and an L∞ attack on one grid: the report says their worst cases were kept apart
    assert "- L2 and L∞ budgets were not merged" in markdown
    quiet = write_report(EvaluationResult(**{**vars(result), "warnings": []}), tmp_path / "quiet")
    assert "None: every sanity check passed." in quiet["markdown"].read_text()

    width, height = png_size(paths["robust_accuracy"])
    assert width >= 300 and height >= 200 and paths["robust_accuracy"].stat().st_size > 1024


def test_report_lists_warnings(result, tmp_path):
    warned = EvaluationResult(**{**vars(result), "warnings": ["robust accuracy of 'x' increases with ε"]})
    markdown = write_report(warned, tmp_path)["markdown"].read_text()
    assert "- robust accuracy of 'x' increases with ε\n" in markdown


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(result={"n": 1}), "result must be an EvaluationResult"),
        (dict(extra={"x": object()}), "extra must be JSON-serialisable"),
        (dict(extra={"x": float("nan")}), "extra must be JSON-serialisable"),
        (dict(extra={1: "a"}), "extra must be a dict with string keys"),
        (dict(title=3), "title must be a string"),
    ],
)
def test_write_report_bad_inputs(result, tmp_path, kwargs, match):
    args = {"result": result, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_report(args.pop("result"), tmp_path, **args)
    assert list(tmp_path.iterdir()) == []


def test_spectrum_and_energy_figures(tmp_path):
    p = torch.linspace(1.0, 0.0, 8)
    p = p / p.sum()
    bars = plot_spectrum_shift(p, tmp_path / "shift.png", "PGD-L2, ε = 0.5")
    curves = plot_energy_curves({"pgd": np.linspace(0.4, 1, 8), "lora-pgd r=3": [0.6, 0.9, 1.0]}, tmp_path / "e.png")
    for path in (bars, curves):
        png_size(path)
        assert path.stat().st_size > 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "shift.png"]


def test_spectrum_shift_draws_undefined_indices(tmp_path):
    """NaN marks an index with no defined shift (σ_j = 0 in every clean image): drawn, not refused."""
    path = plot_spectrum_shift([0.5, float("nan"), 0.5], tmp_path / "s.png", "t")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1024


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: plot_spectrum_shift([], d / "a.png", "t"), "p must be a non-empty 1-D array"),
        (lambda d: plot_spectrum_shift([[1.0, 2.0]], d / "a.png", "t"), "p must be a non-empty 1-D array"),
        (lambda d: plot_spectrum_shift([1.0, float("inf")], d / "a.png", "t"), "p must be a non-empty 1-D"),
        (lambda d: plot_spectrum_shift([float("nan")] * 3, d / "a.png", "t"), "p must be a non-empty 1-D"),
        (lambda d: plot_spectrum_shift([1.0], d / "a.pdf", "t"), "out_path must name a .png file"),
        (lambda d: plot_energy_curves({}, d / "a.png"), "curves must be a non-empty mapping"),
        (lambda d: plot_energy_curves({"pgd": ["x"]}, d / "a.png"), r"curves\['pgd'\] must be a 1-D array"),
    ],
)
def test_figure_bad_inputs(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


# ---------------------------------------------------------------- tables

ROWS = [{"attack": "pgd", "eps": 0.5, "acc": 0.123456, "note": None}, {"attack": "lora|pgd", "eps": 8, "acc": 1.0, "note": "x"}]


def test_markdown_table():
    table = markdown_table(ROWS, {"attack": "attack", "eps": "ε", "acc": "robust acc", "note": "note"})
    assert table.splitlines() == [
        "| attack    |   ε | robust acc | note |",
        "| --------- | --: | ---------: | ---- |",
        "| pgd       | 0.5 |     0.1235 | —    |",
        "| lora\\|pgd |   8 |          1 | x    |",
    ]


def test_format_table_aligns_columns():
    table = format_table(ROWS, ["attack", "eps", "acc"])
    assert table.splitlines() == [
        "attack    eps     acc",
        "--------  ---  ------",
        "pgd       0.5  0.1235",
        "lora|pgd    8       1",
    ]
    assert format_table([], ["attack"]) == "attack\n------\n"


@pytest.mark.parametrize(
    "rows, columns, match",
    [
        (ROWS, ["attack", "missing"], r"rows\[0\] lacks column\(s\) \['missing'\]"),
        (ROWS, [], "columns must hold at least one"),
        (ROWS, "attack", "columns must be a sequence of keys"),
        ([3], ["attack"], r"rows must be mappings .* at rows\[0\]"),
    ],
)
def test_tables_bad_inputs(rows, columns, match):
    for render in (markdown_table, format_table):
        with pytest.raises(ValueError, match=match):
            render(rows, columns)


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "sub" / "f.txt", "old")
    assert target.read_text() == "old"

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
