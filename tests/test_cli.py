"""The command line end to end on real Fashion-MNIST, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from robustlr.cli import build_parser, main
from robustlr.models import create, save_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fmnist):
    from robustlr.train.quick import fit

    train, _ = fmnist
    model = create("lenet5", num_classes=10)
    fit(model, train.images[:5000], train.labels[:5000], epochs=1, lr=0.05, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.pt"
    save_checkpoint(path, model, {"data": "fashion-mnist"})
    return path


def test_evaluate_end_to_end_writes_readable_reports(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--n", "64", "--attack", "pgd-linf", "--attack", "lora-pgd",
                 "--attack", "pgd-l2", "--eps", "0", "0.05", "--eps-l2", "0,1.0", "--rank", "3", "0.2", "--steps", "3",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "robust acc" in printed and "lora-pgd r=3" in printed and "lora-pgd r=0.2" in printed
    for norm in ("linf", "l2"):
        doc = json.loads((out / norm / "result.json").read_text())
        res = doc["result"]
        assert res["n"] == 64
        runs = {(a["attack"], a["eps"]): a for a in res["attacks"]}
        clean = res["clean_accuracy"]
        for (name, eps), row in runs.items():
            assert row["robust_accuracy"] <= clean + 1e-12
            if eps == 0:
                assert row["robust_accuracy"] == pytest.approx(clean)
        md = (out / norm / "report.md").read_text()
        assert "robust_accuracy.png" in md and "| attack" in md
        png = (out / norm / "robust_accuracy.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 1000
    l2 = json.loads((out / "l2" / "result.json").read_text())["result"]
    names = {a["attack"] for a in l2["attacks"]}
    assert names == {"lora-pgd r=3", "lora-pgd r=0.2", "pgd-l2"}
    csv_lines = (out / "l2" / "result.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 3 * 2


def test_attack_saves_adversarial_examples(checkpoint, tmp_path):
    out = tmp_path / "atk"
    assert main(["attack", "--checkpoint", str(checkpoint), "--n", "20", "--attack", "pgd-linf", "--eps", "0.1",
                 "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    adv = torch.load(out / "adversarial" / "pgd-linf_eps0.1.pt", weights_only=True)
    assert adv.shape == (20, 1, 28, 28)
    from robustlr.data import load_dataset

    x = load_dataset("fashion-mnist", "test").images[:20]
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6


def test_attack_reports_the_recorded_attacks_as_the_bare_ones(checkpoint, tmp_path):
    """Recording the adversarial batches changes nothing in the report: norm, budget check, nuclear norms of
    the low-rank attack, the attack's repr."""
    options = ["--checkpoint", str(checkpoint), "--n", "16", "--attack", "pgd-l2", "--attack", "lora-pgd", "--eps",
               "1", "--rank", "3", "--steps", "2", "--no-progress"]
    docs = {}
    for command in ("attack", "evaluate"):
        assert main([command, *options, "--out", str(tmp_path / command)]) == 0
        docs[command] = json.loads((tmp_path / command / "result.json").read_text())["result"]["attacks"]
    def timeless(attacks: list[dict]) -> list[dict]:
        return [{k: v for k, v in a.items() if k != "seconds"} for a in attacks]

    assert timeless(docs["attack"]) == timeless(docs["evaluate"])
    lora = next(a for a in docs["attack"] if a["attack"].startswith("lora-pgd"))
    assert lora["norm"] == "l2" and lora["mean_nuclear"] is not None and lora["attack_repr"].startswith("LoRaPGD(")


def test_spectrum_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "spec"
    assert main(["spectrum", "--checkpoint", str(checkpoint), "--n", "32", "--attack", "pgd-l2", "--attack", "lora-pgd",
                 "--rank", "3", "--eps", "1.0", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "spectrum.json").read_text())
    by_name = {a["attack"]: a for a in doc["attacks"]}
    assert set(by_name) == {"pgd-l2", "lora-pgd r=3"}
    assert by_name["lora-pgd r=3"]["effective_rank"] < by_name["pgd-l2"]["effective_rank"]
    assert sum(v for v in by_name["pgd-l2"]["shift_fraction"] if v is not None) == pytest.approx(1.0)
    assert (out / "energy.png").read_bytes().startswith(PNG)
    assert "effective rank" in (out / "spectrum.md").read_text()


def test_config_file_and_command_line_precedence(checkpoint, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'checkpoint = "{checkpoint}"\nattack = ["fgsm"]\neps = [0.05]\nn = 16\nno-progress = true\n')
    out = tmp_path / "cfg"
    assert main(["evaluate", "--config", str(cfg), "--n", "8", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())["result"]
    assert res["n"] == 8
    assert {(a["attack"], a["eps"]) for a in res["attacks"]} == {("fgsm", 0.05)}


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["evaluate", "--model", "lenet5", "--data", "imagenet"], "imagenet"),
        (["evaluate", "--model", "resnet1000"], "resnet1000"),
        (["evaluate", "--model", "lenet5", "--rank", "40", "--attack", "lora-pgd", "--eps", "1"], "rank"),
        (["evaluate", "--model", "lenet5", "--steps", "0"], "--steps"),
        (["evaluate"], "--checkpoint"),
        (["evaluate", "--checkpoint", "/nonexistent/x.pt"], "x.pt"),
        (["evaluate", "--model", "lenet5", "--data", "mnist", "--data-root", "/nonexistent"], "mnist"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    code = main(argv + ["--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "x" / "result.json").exists()


def test_unparsable_lists_and_bad_config(tmp_path):
    for argv in (["evaluate", "--eps", "0.1,abc"], ["evaluate", "--rank", "1.5"], ["evaluate", "--eps", "-1"]):
        proc = subprocess.run([sys.executable, "-m", "robustlr", *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--" in proc.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("colour = 'red'\n")
    proc = subprocess.run([sys.executable, "-m", "robustlr", "evaluate", "--config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "colour" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, create("mlp", num_classes=10), {})
    assert main(["evaluate", "--model", "lenet5", "--checkpoint", str(path), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "does not match the model" in capsys.readouterr().err


def test_help_lists_every_command_and_option():
    text = build_parser().format_help()
    for command in ("demo", "evaluate", "attack", "spectrum"):
        assert command in text
    sub = subprocess.run([sys.executable, "-m", "robustlr", "evaluate", "--help"], capture_output=True, text=True).stdout
    for option in ("--model", "--model-file", "--checkpoint", "--data", "--split", "--n", "--attack", "--eps", "--rank",
                   "--steps", "--restarts", "--amp", "--seed", "--batch-size", "--device", "--out", "--config"):
        assert option in sub


@pytest.mark.parametrize("argv", [["demo"], ["evaluate"], ["attack"], ["spectrum"], ["train"], ["reproduce", "x"],
                                  ["results"]], ids=lambda argv: argv[0])
def test_an_unknown_option_is_reported_by_its_own_command(argv, capsys):
    assert main([*argv, "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustlr: error: unrecognized arguments: --bogus") and len(err.strip().splitlines()) == 1
    assert f"see 'robustlr {argv[0]} --help'" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["evaluate", "--batch-size", "0"], "--batch-size must be an integer >= 1; got 0"),
    (["evaluate", "--n", "-1"], "--n must be an integer >= 0 (0 = all); got -1"),
    (["evaluate", "--n", "1.5"], "--n must be an integer >= 0 (0 = all); got 1.5"),
    (["attack", "--steps", "0"], "--steps must be an integer >= 1; got 0"),
    (["spectrum", "--restarts", "0"], "--restarts must be an integer >= 1; got 0"),
    (["evaluate", "--seed", "-1"], "--seed must be an integer >= 0; got -1"),
    (["evaluate", "--eps", "0.1,nan"], "--eps must be a finite number >= 0; got nan"),
    (["evaluate", "--rank", "0"], "--rank must be an int >= 1"),
    (["evaluate", "--device", "meta"], "--device must be one this machine has (cpu"),
    (["demo", "--seed", "x"], "--seed must be an integer >= 0; got 'x'"),
    (["train", "--batch-size", "0"], "--batch-size must be an integer >= 1; got 0"),
    (["train", "--val-fraction", "1"], "--val-fraction must be a number in (0, 1)"),
    (["train", "--train-subset", "1"], "--train-subset must be an integer >= 2"),
    (["train", "--eval-n", "-1"], "--eval-n must be an integer >= 0 (0 = all); got -1"),
    (["train", "--gamma", "0"], "--gamma must be a finite number > 0; got 0"),
    (["train", "--adv", "pgd", "--adv-fraction", "2"], "--adv-fraction must be a number in [0, 1]"),
    (["train", "--adv", "pgd", "--adv-eps", "-0.1"], "--adv-eps must be a finite number >= 0; got -0.1"),
    (["train", "--adv", "lora-pgd", "--adv-rank", "0"], "--adv-rank must be an int >= 1"),
    (["train", "--adv", "pgd", "--adv-norm", "l1"], "--adv-norm: invalid choice: 'l1' (choose from 'linf', 'l2')"),
    (["train", "--theta", "1"], "--theta must be a relative truncation tolerance in [0, 1); got 1"),
    (["train", "--rank", "x"], "--rank must be an int >= 1"),
    (["train", "--nproc", "0"], "--nproc must be an integer >= 1; got 0"),
])
def test_option_values_are_checked_under_their_option_names_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustlr: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_the_model_under_autocast_and_keeps_the_budget(checkpoint, tmp_path, monkeypatch, amp):
    from robustlr.data import load_dataset
    from robustlr.models.lenet import LeNet5

    seen = []
    forward = LeNet5.forward

    def recording(self, x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), x.dtype))
        return forward(self, x)

    monkeypatch.setattr(LeNet5, "forward", recording)
    out = tmp_path / "amp"
    assert main(["attack", "--checkpoint", str(checkpoint), "--n", "16", "--attack", "pgd-linf", "--attack", "pgd-l2",
                 "--eps-linf", "0.1", "--eps-l2", "1.0", "--steps", "3", "--amp", amp, "--out", str(out),
                 "--no-progress"]) == 0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    # the fit check (one forward before any work) in full precision, then every forward pass of the evaluation
    # (per norm at least the clean pass and 3 attack steps) under autocast; the images stay float32
    assert seen[0][0] is False and len(seen) >= 1 + 2 * (1 + 3)
    assert set(seen[1:]) == {(True, dtype, torch.float32)}
    x = load_dataset("fashion-mnist", "test").images[:16]
    linf = torch.load(out / "adversarial" / "pgd-linf_eps0.1.pt", weights_only=True)
    l2 = torch.load(out / "adversarial" / "pgd-l2_eps1.pt", weights_only=True)
    assert linf.dtype == l2.dtype == torch.float32
    assert float((linf - x).abs().max()) <= 0.1  # the budget exactly, not within a tolerance
    assert float((l2 - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-6
    for norm in ("linf", "l2"):
        doc = json.loads((out / norm / "result.json").read_text())
        assert doc["extra"]["options"]["amp"] == amp
        assert f"{amp} autocast" in (out / norm / "report.md").read_text()
