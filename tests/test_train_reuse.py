"""``ensure_trained``: a finished run of the same settings is reused, one of other settings refused, one with
more epochs continued; ``train_seconds`` sums the logged epoch times."""

from __future__ import annotations

import json

import pytest

from robustlr.train import TrainConfig, ensure_trained, train_seconds


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
