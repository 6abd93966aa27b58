"""``robustlr demo --quick`` end to end on real Fashion-MNIST: its report files read back and checked against
independent recomputation (κ(S) of the saved CondLR model, clean accuracy of the saved dense model, stored
weights from the layers' shapes), its reuse of finished runs, its bad-input errors, how it gets its data (or
says why it cannot) and what it says when interrupted."""

from __future__ import annotations

import json
import os
import signal

import pytest
from test_data_provision import bare, debian_root  # noqa: F401  (fixtures: a machine without the data)

from robustlr.analysis.conditioning import layer_condition_numbers, orthogonality_errors
from robustlr.cli import build_parser, main
from robustlr.demo import MODELS, NORMS, DemoSettings, run_demo
from robustlr.train import TrainingInterrupted
from robustlr.train import load_trained
from robustlr.train.quick import accuracy

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_report_files_are_complete(demo):
    report = (demo / "report.md").read_text()
    figures = ["kappa.png", "compression.png", "energy.png", *(f"shift-{m}.png" for m in MODELS),
               *(f"accuracy-{a}.png" for names in NORMS.values() for a in names)]
    for name in figures:
        assert f"]({name})" in report, name
        assert (demo / name).read_bytes().startswith(PNG), name
    assert "| condlr − low-rank |" in report and "| condlr − dense " in report
    for section in ("## Summary", "## Robust accuracy vs ε", "## Conditioning", "## Compression", "## Spectrum"):
        assert section in report
    for model in MODELS:
        for norm in NORMS:
            assert (demo / model / f"attacks-{norm}" / "result.json").is_file()


@pytest.mark.slow
def test_report_numbers_match_recomputation(demo, fmnist):
    doc = json.loads((demo / "demo.json").read_text())
    settings = DemoSettings.quick()
    assert list(doc["models"]) == list(MODELS) and doc["settings"]["n_test"] == settings.n_test
    summary = {row["model"]: row for row in doc["summary"]}
    _, test = fmnist
    x, y = test.images[: settings.n_test], test.labels[: settings.n_test]
    for name, entry in doc["models"].items():
        model, _ = load_trained(demo / name / "last.pt")
        # clean accuracy of the saved model on the attacked images, recomputed
        assert summary[name]["clean"] == pytest.approx(accuracy(model, x, y), abs=1e-9)
        # every attack at every ε: robust ≤ clean, ‖δ‖ within budget, the right number of images
        for norm, evaluation in entry["evaluations"].items():
            assert evaluation["n"] == settings.n_test
            assert {a["attack"] for a in evaluation["attacks"]} == set(NORMS[norm])
            for row in evaluation["attacks"]:
                assert 0.0 <= row["robust_accuracy"] <= evaluation["clean_accuracy"]
                bound = row["mean_linf"] if norm == "linf" else row["mean_l2"]
                assert bound <= row["eps"] + 1e-5
        # κ per layer, recomputed from the saved weights
        kappa = layer_condition_numbers(model)
        assert entry["kappa"] == pytest.approx(kappa, rel=1e-6)
        # stored weights: n·m + bias dense, r(n + m) (+ r² for U S Vᵀ) + bias factorised
        for layer in entry["compression"]["layers"][:-1]:
            n, m = layer["shape"]
            r, bias = layer["rank"], layer["dense_params"] - n * m
            expected = {"dense": n * m, "low-rank": r * (n + m), "condlr": r * (n + m) + r * r}[name] + bias
            assert layer["params"] == expected, (name, layer)
    condlr, _ = load_trained(demo / "condlr" / "last.pt")
    assert max(layer_condition_numbers(condlr).values()) <= 1.1 + 1e-5
    assert max(orthogonality_errors(condlr).values()) < 1e-4
    assert summary["dense"]["param_reduction"] == 0 and summary["condlr"]["param_reduction"] > 0.5
    assert summary["low-rank"]["kappa_max"] > 1.1 + 1e-3  # vanilla low-rank is not conditioned
    spectrum = doc["models"]["dense"]["spectrum"]
    assert [s["n"] for s in spectrum] == [settings.n_spectrum] * 2
    for s in spectrum:
        curve = s["energy_curve"]
        assert len(curve) == 28 and curve[-1] == pytest.approx(1.0) and curve == sorted(curve)


@pytest.mark.slow
def test_rerun_reuses_finished_models_and_refuses_other_settings(demo, capsys):
    stamps = {m: (demo / m / "last.pt").stat().st_mtime_ns for m in MODELS}
    before = json.loads((demo / "demo.json").read_text())["summary"]
    assert main(["demo", "--quick", "--out", str(demo), "--no-progress"]) == 0
    assert {m: (demo / m / "last.pt").stat().st_mtime_ns for m in MODELS} == stamps
    after = json.loads((demo / "demo.json").read_text())["summary"]
    assert [{k: v for k, v in row.items() if k != "train_seconds"} for row in after] == \
           [{k: v for k, v in row.items() if k != "train_seconds"} for row in before]
    printed = capsys.readouterr().out
    assert all(m in printed for m in MODELS) and "lora-pgd" in printed and "condlr − low-rank" in printed
    assert main(["demo", "--quick", "--seed", "1", "--out", str(demo), "--no-progress"]) == 2
    assert "seed" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    ({"eps_l2": (2.0, 1.0)}, "eps_l2"), ({"summary_linf": 0.3}, "summary_linf"), ({"n_spectrum": 5000}, "n_spectrum"),
    ({"epochs": 0}, "epochs"), ({"eps_linf": (0.0, 0.1)}, "eps_linf"), ({"lora_rank": -1.0}, "lora_rank"),
    ({"lora_rank": 2.0}, "lora_rank"), ({"lora_rank": 29}, "lora_rank"), ({"device": "gpu0"}, "device"),
    ({"train_subset": 5}, "train_subset"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoSettings(**kwargs)



# --- data: provisioned on a bare machine, a named --data-root the only place looked in -----------------------


@pytest.mark.parametrize("make, problem", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "lacks train-images-idx3-ubyte.gz (or train-images-idx3-ubyte), train-labels"),
    (lambda root: root.write_text("x"), "is not a directory"),
])
def test_a_bad_data_root_exits_2_naming_it(tmp_path, capsys, make, problem):
    root = tmp_path / "data"
    make(root)
    code = main(["demo", "--quick", "--data-root", str(root), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"--data-root) {root} {problem}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_root_and_no_network_exits_2_with_what_was_tried(bare, debian_root, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = main(["demo", "--quick", "--out", str(bare / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("robustlr: fashion-mnist not found; downloading it (checksum-verified) into ")
    assert "robustlr: error: fashion-mnist (train split) not found" in err
    assert "Tried:\n  - apt-get install -y dataset-fashion-mnist: not run: not root (effective uid 1000)" in err
    assert "Connection refused" in err and "To get the data:" in err
    assert not (bare / "out").exists()


def test_no_download_is_passed_on(bare, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("robustlr.data.apt.DEBIAN_VERSION_FILE", bare / "not-debian")
    code = main(["demo", "--quick", "--no-download", "--out", str(bare / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "  - download: not tried (download=False; CLI: --no-download)" in err
    assert "downloading" not in err and "Traceback" not in err


def test_an_interrupted_demo_says_to_run_it_again_never_to_pass_resume(tmp_path, monkeypatch):
    hint = build_parser().parse_args(["demo"]).continue_hint
    assert hint.startswith("run the same command again") and "--resume" not in hint

    def interrupted(config, progress):
        raise TrainingInterrupted(signal.SIGINT, "training stopped by SIGINT in epoch 1 after batch 3 of 42; the "
                                                 "resumable state is saved: run the same command with --resume to continue")

    monkeypatch.setattr("robustlr.demo.pipeline.ensure_trained", interrupted)
    with pytest.raises(TrainingInterrupted) as caught:
        run_demo(DemoSettings.quick(), tmp_path / "demo", progress=False)
    assert caught.value.signum == signal.SIGINT and "--resume" not in str(caught.value)
    assert str(caught.value) == f"demo stopped by SIGINT while training {tmp_path / 'demo' / 'dense'}; its state is saved there"
