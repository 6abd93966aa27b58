"""Experiment configs: every config validates, the smallest variants run end to end, failures are recorded, missing
data is skipped, bad configs are refused, results.md regenerates."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from robustlr.cli import main
from robustlr.data import discovery
from robustlr.reproduce import available, configs, load_experiment, reproduce
from robustlr.reproduce.kinds import KIND_REGISTRY
from robustlr.reproduce.results import write_results
from robustlr.train import TrainConfig, TrainingInterrupted


@pytest.mark.parametrize("name", available())
def test_every_config_validates(name, tmp_path):
    for smallest in (False, True):
        exp = load_experiment(name, smallest=smallest)
        assert exp.name == name and exp.runs
        for run in exp.runs:
            TrainConfig.from_dict({**{k: v for k, v in run.items() if k != "id"}, "out": str(tmp_path / run["id"])})
        assert set(exp.settings) == set(KIND_REGISTRY[exp.kind].schema)


def test_cifar_variants_share_the_condlr_method_grid():
    base = {r["id"]: (r.get("method"), r.get("rank"), r.get("tau")) for r in load_experiment("condlr-table").runs}
    for name, model in (("condlr-table-cifar10-vgg16", "vgg16"), ("condlr-table-cifar10-wrn16-4", "wrn-16-4")):
        exp = load_experiment(name)
        assert {r["id"]: (r.get("method"), r.get("rank"), r.get("tau")) for r in exp.runs} == base
        assert {(r["model"], r["data"], r["epochs"], r["augment"]) for r in exp.runs} == {(model, "cifar10", 120, True)}


def _publish(tmp_path, out):
    """Render results.md from the smallest table of ``out`` (smallest tables are never published as they are)."""
    doc = json.loads((out / "table.json").read_text())
    doc["smallest"] = False
    (out / "table.json").write_text(json.dumps(doc))
    return write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()


def test_smallest_condlr_table_runs_resumes_and_tabulates(fmnist, tmp_path, capsys):
    out = tmp_path / "ct"
    only = ["--only", "dense", "--only", "lowrank-r0.2", "--only", "condlr-tau0.1-r0.2"]
    assert main(["reproduce", "condlr-table", "--smallest", "--out", str(out), "--no-progress", *only]) == 0
    doc = json.loads((out / "table.json").read_text())
    rows = {r["run"]: r for r in doc["rows"]}
    assert set(rows) == {"dense", "lowrank-r0.2", "condlr-tau0.1-r0.2"} and doc["runs_expected"] == 10
    assert doc["runs"] == {"finished": 3, "pending": 7} and doc["failed"] == 0
    assert rows["condlr-tau0.1-r0.2"]["kappa_max"] <= 1.1 + 1e-5
    assert rows["dense"]["param_reduction"] == 0 and rows["condlr-tau0.1-r0.2"]["param_reduction"] > 0.5
    assert all(r["pgd-linf@0.05"] <= r["clean"] and r["status"] == "finished" for r in doc["rows"])
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
    assert "runs finished: 3 of 10 (7 pending)" in text
    assert (tmp_path / "docs" / "figures" / "condlr-table-pgd-linf.png").is_file()


def test_smallest_lorapgd_table_runs_resumes_and_tabulates(fmnist, tmp_path, monkeypatch):
    out = tmp_path / "lorapgd-table"
    assert main(["reproduce", "lorapgd-table", "--smallest", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "table.json").read_text())
    exp = load_experiment("lorapgd-table", smallest=True)
    eps = exp.settings["eps"][0]
    assert doc["kind"] == "attack-table" and doc["runs"] == {"finished": 2} and doc["failed"] == 0
    rows = doc["rows"]
    # per model: PGD, LoRa-PGD (2 inits) and rank-projected PGD at ranks 0.1 and 1.0 of 28 (r = 3, 28), one eps
    assert len(rows) == 2 * (1 + 2 * 2 + 2) and {r["status"] for r in rows} == {"ok"}
    side, pixel_bytes = 28, 28 * 28 * 4
    for model in ("standard", "pgd-l2"):
        at = {(r["attack"], r["init"], r["rank"]): r for r in rows if r["model"] == model}
        assert set(at) == {("pgd-l2", None, None), ("lora-pgd", "lora", 3), ("lora-pgd", "svd", 3),
                           ("lora-pgd", "lora", 28), ("lora-pgd", "svd", 28), ("rank-pgd", None, 3), ("rank-pgd", None, 28)}
        assert len({r["clean"] for r in at.values()}) == 1 and all(r["n"] == 32 and r["eps"] == eps for r in at.values())
        pgd = at[("pgd-l2", None, None)]
        assert pgd["state_bytes"] == pixel_bytes and at[("rank-pgd", None, 3)]["state_bytes"] == pixel_bytes
        for init in ("lora", "svd"):
            for r in (3, 28):  # the factors U (28×r) and V (r×28) against the 28×28 perturbation: 2r/n
                assert at[("lora-pgd", init, r)]["state_bytes"] * side == pixel_bytes * 2 * r
        for row in at.values():
            assert row["robust_accuracy"] <= row["clean"] and row["mean_l2"] <= eps + 1e-5 and row["seconds"] > 0
            assert row["mean_nuclear"] >= row["mean_l2"] - 1e-5  # ‖δ‖_* ≥ ‖δ‖_F (one channel)
        # rank-projected PGD is the same PGD run truncated at the end; at full rank the truncation changes nothing
        full = at[("rank-pgd", None, 28)]
        assert abs(full["mean_l2"] - pgd["mean_l2"]) < 1e-4 and abs(full["robust_accuracy"] - pgd["robust_accuracy"]) <= 1 / 32
        assert at[("rank-pgd", None, 3)]["mean_nuclear"] < pgd["mean_nuclear"]
        assert (out / f"rank_{model}_eps{eps:g}.png").read_bytes().startswith(b"\x89PNG")
    # resumable per cell: a finished cell is not computed again; a missing one is, and if it fails the failure is
    # recorded and the invocation exits 1; the next invocation computes it again
    cell = out / "standard" / "attacks" / "lora-pgd_svd_r0.1.json"
    kept = out / "standard" / "attacks" / "pgd-l2.json"
    mtime = kept.stat().st_mtime_ns
    before = json.loads(cell.read_text())["results"]
    cell.unlink()
    with monkeypatch.context() as patch:
        patch.setattr("robustlr.reproduce.attack_table.run_cell", lambda *args: 1 / 0)
        assert main(["reproduce", "lorapgd-table", "--smallest", "--out", str(out), "--no-progress"]) == 1
    failed = [r for r in json.loads((out / "table.json").read_text())["rows"] if r["status"] != "ok"]
    assert failed == [{**failed[0], "model": "standard", "attack": "lora-pgd", "init": "svd", "rank": 0.1,
                       "status": "failed", "error": "ZeroDivisionError: division by zero"}]
    assert main(["reproduce", "lorapgd-table", "--smallest", "--out", str(out), "--no-progress"]) == 0
    assert kept.stat().st_mtime_ns == mtime and json.loads(cell.read_text())["results"] == [
        {**before[0], "seconds": json.loads(cell.read_text())["results"][0]["seconds"]}]
    assert not cell.with_name("lora-pgd_svd_r0.1.status.json").exists()
    text = _publish(tmp_path, out)
    assert "robustlr reproduce lorapgd-table" in text and "| lora-pgd |" in text and "attack time of all rows" in text
    assert (tmp_path / "docs" / "figures" / f"lorapgd-table-rank_standard_eps{eps:g}.png").is_file()


def test_smallest_lorapgd_spectrum_runs_and_tabulates(fmnist, tmp_path):
    out = tmp_path / "lorapgd-spectrum"
    assert main(["reproduce", "lorapgd-spectrum", "--smallest", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "table.json").read_text())
    exp = load_experiment("lorapgd-spectrum", smallest=True)
    assert [r["id"] for r in exp.runs] == [r["id"] for r in load_experiment("lorapgd-table", smallest=True).runs]
    assert doc["kind"] == "spectrum" and doc["runs"] == {"finished": 2} and doc["failed"] == 0
    rows = {(r["model"], r["attack"]): r for r in doc["rows"]}
    assert set(rows) == {(m, a) for m in ("standard", "pgd-l2") for a in ("pgd-l2", "pgd-linf", "gaussian-l2")}
    energy = ["E@r=3", "E@r=6", "E@r=8", "E@r=11", "E@r=14"]
    for (model, attack), row in rows.items():
        curve = [row[k] for k in energy]
        assert all(0 < a <= b <= 1 + 1e-9 for a, b in zip(curve, curve[1:]))
        assert 1 <= row["stable_rank"] <= 28 and 1 <= row["effective_rank"] <= 28
        assert 0 <= row["shift_lower_half"] <= 1 + 1e-9
        if attack != "pgd-linf":  # ‖δ‖_* ≤ √rank · ‖δ‖_F ≤ √28 · ε
            assert row["nuclear_norm"] <= math.sqrt(28) * row["eps"] + 1e-5
    # the reference does not depend on the model: same seed, same images
    assert rows[("standard", "gaussian-l2")] == {**rows[("pgd-l2", "gaussian-l2")], "model": "standard"}
    for name in ("shift_standard_pgd-l2.png", "shift_pgd-l2_gaussian-l2.png", "energy.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG") and name in doc["figures"]
    text = _publish(tmp_path, out)
    assert "robustlr reproduce lorapgd-spectrum" in text and "gaussian-l2" in text


_FAILS = """
    name = "fails"
    kind = "train-grid"
    version = 1
    description = "a good run, one whose loss becomes non-finite, one whose rank does not fit, another good one"

    [defaults]
    model = "lenet5"
    data = "fashion-mnist"
    method = "dense"
    epochs = 1
    train_subset = 300
    eval_n = 16
    eval_eps = [0.0, 0.1]
    eval_steps = 1

    [[runs]]
    id = "good"

    [[runs]]
    id = "diverges"
    lr = 1e30

    [[runs]]
    id = "bad-rank"
    method = "lowrank"
    rank = 10000

    [[runs]]
    id = "good2"
"""


def _config_dir(monkeypatch, tmp_path, **files):
    directory = tmp_path / "experiments"
    directory.mkdir()
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(textwrap.dedent(text))
    monkeypatch.setattr(configs, "experiments_dir", lambda: directory)
    return directory


def test_failed_runs_are_recorded_and_the_others_go_on(fmnist, tmp_path, monkeypatch, capsys):
    _config_dir(monkeypatch, tmp_path, fails=_FAILS)
    out = tmp_path / "out"
    assert main(["reproduce", "fails", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "NonFiniteLossError" in err and "rank must be an int in [1, 20]" in err and "2 row(s) failed" in err
    doc = json.loads((out / "table.json").read_text())
    rows = {r["run"]: r for r in doc["rows"]}
    assert [r["status"] for r in doc["rows"]] == ["finished", "failed", "failed", "finished"]
    assert rows["diverges"]["error"].startswith("NonFiniteLossError: the training loss is not finite")
    assert rows["bad-rank"]["error"].startswith("ValueError: layer 'features.0': rank must be")
    assert rows["good"]["error"] is None and rows["good2"]["clean"] > 0 and doc["runs"] == {"finished": 2, "failed": 2}
    assert "Traceback" in json.loads((out / "diverges" / "status.json").read_text())["traceback"]
    # the next invocation skips the finished runs and retries the failed ones (from resume.pt where there is one)
    mtime = (out / "good" / "last.pt").stat().st_mtime_ns
    assert main(["reproduce", "fails", "--out", str(out), "--no-progress", "--only", "good", "--only", "diverges"]) == 1
    assert (out / "good" / "last.pt").stat().st_mtime_ns == mtime


def test_a_stop_request_stops_everything(tmp_path, monkeypatch, capsys):
    _config_dir(monkeypatch, tmp_path, fails=_FAILS)
    calls = []

    def stopped(stop):
        def train(config, progress, resume):
            calls.append(config.out)
            raise stop

        return train

    for stop, messages in ((KeyboardInterrupt(), ["robustlr: interrupted"]),
                           (TrainingInterrupted(2, "stopped by SIGINT"), ["stopped by SIGINT", "rerun the same command"])):
        calls.clear()
        monkeypatch.setattr("robustlr.train.reuse.train", stopped(stop))
        assert main(["reproduce", "fails", "--out", str(tmp_path / "out"), "--no-progress"]) == 130
        err = capsys.readouterr().err
        assert len(calls) == 1 and all(message in err for message in messages)
        assert not (tmp_path / "out" / "good" / "status.json").exists() and not (tmp_path / "out" / "table.json").exists()


def test_cifar_runs_are_skipped_without_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ROBUSTLR_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIR", tmp_path / "system")
    out = tmp_path / "vgg"
    assert main(["reproduce", "condlr-table-cifar10-vgg16", "--smallest", "--out", str(out), "--no-progress",
                 "--only", "dense", "--only", "condlr-tau0.1-r0.2"]) == 0
    printed = capsys.readouterr()
    doc = json.loads((out / "table.json").read_text())
    assert [(r["run"], r["status"]) for r in doc["rows"]] == [("dense", "skipped"), ("condlr-tau0.1-r0.2", "skipped")]
    error = doc["rows"][0]["error"]
    assert error.startswith("cifar10 not found locally (looked in ") and str(tmp_path / "system" / "cifar10") in error
    assert doc["runs"] == {"skipped": 2, "pending": 8} and doc["failed"] == 0
    assert "skipped: dense: cifar10 not found locally" in printed.out
    assert not (out / "dense" / "config.json").exists()


@pytest.mark.parametrize("text, match", [
    ('name = "bad"\nkind = "grid"\nversion = 1\n[[runs]]\nid = "a"\n',
     r"kind must be one of \('train-grid', 'attack-table', 'spectrum', 'suite-table'\), got 'grid'"),
    ('name = "bad"\nkind = "train-grid"\nversion = 1\n[attack]\neps = [1.0]\n[[runs]]\nid = "a"\n',
     r"unknown key\(s\) \['attack'\]; allowed for kind 'train-grid'"),
    ('name = "bad"\nkind = "attack-table"\nversion = 1\n[attack]\nepss = [1.0]\n[[runs]]\nid = "a"\n',
     r"attack has unknown key\(s\) \['epss'\]; allowed: \['batch_size', 'checkpoint', 'eps'"),
    ('name = "bad"\nkind = "attack-table"\nversion = 1\n[attack]\nranks = [0.1, 0]\n[[runs]]\nid = "a"\n',
     r"attack.ranks must be an int >= 1 .* or a fraction in \(0, 1\], got 0"),
    ('name = "bad"\nkind = "attack-table"\nversion = 1\n[attack]\ninits = ["fgsm"]\n[[runs]]\nid = "a"\n',
     r"attack.inits must be one of 'lora', 'svd'; got 'fgsm'"),
    ('name = "bad"\nkind = "spectrum"\nversion = 1\n[spectrum]\nattacks = ["lora-pgd"]\n[[runs]]\nid = "a"\n',
     r"spectrum.attacks must be one of 'fgsm', 'fgm-l2', 'pgd-linf', 'pgd-l2', 'apgd-ce-linf', .*'square-l2'; "
     r"got 'lora-pgd'"),
    ('name = "bad"\nkind = "train-grid"\nversion = 1\n[[runs]]\nid = "a"\nlrr = 0.1\n',
     r"run 'a': unknown training settings \['lrr'\]; allowed: "),
    ('name = "bad"\nkind = "train-grid"\nversion = 1\n[[runs]]\nid = "a"\nmethod = "sparse"\n',
     r"run 'a': method must be one of 'dense', 'lowrank', 'condlr', 'orthogonal'; got 'sparse'"),
    ('name = "bad"\nkind = "spectrum"\nversion = 1\nmodels_from = "nowhere"\n',
     r"models_from must name another experiment of \['bad'\], got 'nowhere'"),
    ('name = "other"\nkind = "train-grid"\nversion = 1\n[[runs]]\nid = "a"\n',
     r"name must be the file's stem 'bad', got 'other'"),
])
def test_bad_configs_are_refused_naming_key_value_and_allowed(tmp_path, monkeypatch, text, match):
    directory = _config_dir(monkeypatch, tmp_path, bad=text)
    with pytest.raises(ValueError, match=match):
        load_experiment("bad", directory=directory)
    with pytest.raises(ValueError, match=match):
        reproduce("bad", tmp_path / "out", progress=False)


def test_bad_experiment_names(capsys):
    assert main(["reproduce", "no-such-table"]) == 2
    assert "condlr-table" in capsys.readouterr().err
    assert main(["reproduce", "condlr-table", "--only", "nope", "--smallest", "--no-progress", "--out", "/tmp/x-none"]) == 2
