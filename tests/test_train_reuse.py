"""``ensure_trained``: a finished run of the same settings is reused, one of other settings refused, one with
more epochs continued, one whose files cannot be read resumed or trained again (its files kept);
``train_seconds`` sums the logged epoch times; malformed JSON files are errors naming the file."""

from __future__ import annotations

import json

import pytest
import torch

from robustlr.train import TrainConfig, ensure_trained, train_seconds
from robustlr.train.reuse import why_unfinished


def _config(out, **changes) -> TrainConfig:
    settings = {"method": "condlr", "rank": 0.2, "epochs": 1, "lr": 0.05, "momentum": 0.9, "milestones": [],
                "train_subset": 400, "eval_eps": [0.0], "eval_n": 16, "eval_steps": 1, "robust_val_n": 16,
                "out": str(out)}
    return TrainConfig.from_dict({**settings, **changes})


@pytest.mark.slow
def test_reuse_refuse_and_extend(fmnist, tmp_path):
    out = tmp_path / "run"
    assert ensure_trained(_config(out), progress=False) is True
    stamp = (out / "last.pt").stat().st_mtime_ns
    assert ensure_trained(_config(out), progress=False) is False          # same settings: reused, not retrained
    assert (out / "last.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="tau"):                             # other settings: refused, untouched
        ensure_trained(_config(out, tau=0.5), progress=False)
    assert (out / "last.pt").stat().st_mtime_ns == stamp
    assert ensure_trained(_config(out, epochs=2), progress=False) is True   # more epochs: the run continues
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert train_seconds(out) == pytest.approx(sum(h["seconds"] for h in history)) and train_seconds(out) > 0


def _finished_run(out):
    assert ensure_trained(_config(out), progress=False) is True
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_an_empty_last_pt_is_not_reused_the_run_is_trained_again(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    files = _finished_run(out)
    (out / "last.pt").write_bytes(b"")
    assert f"{str(out / 'last.pt')!r} is empty (0 bytes)" in why_unfinished(out)
    assert ensure_trained(_config(out), progress=False) is True       # not reused: resume.pt is at the last epoch
    err = capsys.readouterr().err
    assert "last.pt' is empty (0 bytes)" in err and "training it again from scratch" in err and "set-aside-1" in err
    assert why_unfinished(out) is None and torch.load(out / "last.pt", weights_only=True)
    aside = out / "set-aside-1"                                         # nothing is deleted
    assert (aside / "last.pt").read_bytes() == b"" and (aside / "summary.json").read_bytes() == files["summary.json"]
    assert ensure_trained(_config(out), progress=False) is False       # and now it is finished


def test_an_unreadable_checkpoint_or_summary_is_resumed_from_resume_pt(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    _finished_run(out)
    (out / "summary.json").write_text("{not json")                     # resume.pt redoes the final evaluation
    stamp = (out / "last.pt").stat().st_mtime_ns
    assert "summary.json' is not valid JSON (line 1 column 2" in why_unfinished(out)
    assert ensure_trained(_config(out), progress=False) is True
    assert "resuming from" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 1
    assert (out / "last.pt").stat().st_mtime_ns == stamp and not (out / "set-aside-1").exists()
    (out / "last.pt.json").write_text("[]")                            # a sidecar that is not an object
    assert why_unfinished(out).endswith("last.pt.json': expected a JSON object, got a list")
    assert ensure_trained(_config(out, epochs=2), progress=False) is True  # epoch 2 rewrites last.pt
    assert why_unfinished(out) is None and not (out / "set-aside-1").exists()
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]


def test_a_malformed_config_json_is_refused_naming_the_file(fmnist, tmp_path):
    out = tmp_path / "run"
    files = _finished_run(out)
    (out / "config.json").write_text('{"method": ')
    with pytest.raises(ValueError, match=r"run config '.*config\.json' is not valid JSON \(line 1 column 12"):
        ensure_trained(_config(out), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {**files, "config.json": b'{"method": '}


@pytest.mark.parametrize("text, problem", [
    (b"", "is empty (0 bytes)"),
    (b"[1, 2]", ": expected a JSON object, got a list"),
    (b"{}", ": history must be a list of epoch records with 'seconds'; got None"),
    (b'{"history": [{"epoch": 1}]}', ": history must be a list of epoch records with 'seconds'"),
])
def test_train_seconds_names_the_file_and_the_problem(tmp_path, text, problem):
    (tmp_path / "metrics.json").write_bytes(text)
    with pytest.raises(ValueError) as error:
        train_seconds(tmp_path)
    separator = "" if problem.startswith(":") else " "
    assert str(error.value).startswith(f"metrics log {str(tmp_path / 'metrics.json')!r}{separator}{problem}")
