"""Distributed training (DDP over gloo on the CPU) on real Fashion-MNIST.

Two processes on the same global batch equal one process (dense, CondLR with adversarial training and a warm
start, rank-adaptive CondLR); the replicas are checked identical every epoch and a divergence is an error; the
sharded evaluation joins to the single-process one; a run killed with SIGKILL (the whole process group) resumes
under torchrun and ends where a single uninterrupted process ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import one_line_error
from robustlr.cli import main
from robustlr.evaluate import at_eps, evaluate
from robustlr.attacks import build_attack
from robustlr.lowrank.layers import LowRankLayer
from robustlr.train import ReplicaDivergenceError, TrainConfig, launch, load_trained, train
from robustlr.train.distributed import Distributed
from robustlr.train.replicas import check_in_sync
from robustlr.train.sharded_eval import merge_evaluations

TIMEOUT = 300
SMALL = {"train_subset": 600, "epochs": 2, "eval_n": 64, "eval_eps": (0.0, 0.1), "eval_steps": 2}
RUNS = {
    "dense": {"method": "dense"},
    "condlr": {"method": "condlr", "grad_scale": "exact"},
    "condlr-theta": {"method": "condlr", "grad_scale": "exact", "theta": 0.05},
    "condlr-lora-warm": {"method": "condlr", "adv": "lora-pgd", "adv_steps": 2, "adv_rank": 3, "adv_fraction": 0.5,
                         "adv_warm_start": True, "robust_val_n": 50},
}


def _argv(settings: dict) -> list[str]:
    argv = []
    for key, value in settings.items():
        option = "--" + key.replace("_", "-")
        if value is True:
            argv.append(option)
        elif isinstance(value, tuple):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    return argv


def _layers(path: Path) -> dict[str, torch.Tensor]:
    """Every parameter of a trained model, with each low-rank layer's factors replaced by W = U S Vᵀ (what the
    network computes; the factors themselves are defined up to a rotation once ranks adapt)."""
    model, _ = load_trained(path)
    values = {name: p.detach() for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] not in ("U", "S", "V")}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLayer):
            values[f"{name}.W"] = module.weight_matrix().detach()
    return values


@pytest.fixture(autouse=True)
def _one_thread_per_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "atol"), [
    ("dense", 1e-5),            # measured 3e-8 after 8 steps
    ("condlr", 1e-5),           # measured 5e-6
    ("condlr-theta", 1e-4),     # rank-adaptive; measured 5e-6 on W (the factors rotate within clustered spectra)
    ("condlr-lora-warm", 1e-3),  # measured 6e-5: the attack amplifies the all-reduce's rounding (see below)
])
def test_two_processes_equal_one_process_on_the_same_global_batch(name, atol, fmnist, tmp_path, capfd):
    """Eight steps (two epochs of 450 images, batch 128: the shards hold 64 + 64 and 33 + 33 samples).

    Adversarial training: LoRa-PGD's factors are a chaotic function of the weights (a 1e-7 change of the weights
    moves them by 2e-2 after three steps), so the rounding differences of the gradient average grow faster
    than in standard training; the weights still agree to 1e-3 and the accuracies exactly.
    """
    settings = {**SMALL, **RUNS[name]}
    single = train(TrainConfig(**settings, out=str(tmp_path / "single")), progress=False)
    assert main(["train", *_argv(settings), "--no-progress", "--nproc", "2", "--out", str(tmp_path / "ddp")]) == 0
    assert capfd.readouterr().out.count("run written to") == 1  # rank 0 reports

    expected, got = _layers(tmp_path / "single" / "last.pt"), _layers(tmp_path / "ddp" / "last.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)
    history = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"]
    for mine, theirs in zip(history, single.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=atol)
        assert mine["train_accuracy"] == pytest.approx(theirs["train_accuracy"], abs=0.01 if atol > 1e-5 else 0)
        assert mine["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=0.01 if atol > 1e-5 else 0)
        assert mine["rank"] == theirs["rank"]
        if name != "dense":
            assert mine["kappa_max"] <= 1 + 0.1 + 1e-5 and mine["orth_error_max"] < 1e-4
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    slack = 2 / 64 if atol > 1e-5 else 0  # weights that differ by 1e-4 may flip a sample or two
    for which in ("last", "best"):  # the sharded evaluation joins to the single-process numbers
        mine, theirs = summary["evaluation"][which], single.summary["evaluation"][which]
        assert mine["n"] == theirs["n"] == 64
        assert mine["clean_accuracy"] == pytest.approx(theirs["clean_accuracy"], abs=slack)
        for row, expected in zip(mine["robust_accuracy"], theirs["robust_accuracy"], strict=True):
            assert (row["attack"], row["eps"]) == (expected["attack"], expected["eps"])
            assert row["robust_accuracy"] == pytest.approx(expected["robust_accuracy"], abs=slack)
    if name == "condlr-lora-warm":  # the bank is gathered from both shards: the same samples as one process
        banks = [torch.load(tmp_path / run / "resume.pt", weights_only=True)["extra"]["adversarial"]["bank"]
                 for run in ("single", "ddp")]
        assert torch.equal(banks[0]["known"], banks[1]["known"])
        assert 225 < int(banks[0]["known"].sum()) <= 450  # 225 attacked per epoch, other samples in epoch 2
        assert all(bool(tensor[banks[1]["known"]].flatten(1).norm(dim=1).gt(0).all()) for tensor in banks[1]["tensors"])


def _diverge_on_rank_1(seed: int) -> int:
    """A worker of :func:`launch`: identical models, then rank 1 nudges one weight; the check must name it."""
    group = Distributed.from_env(torch.device("cpu"))
    try:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        check_in_sync(model, group, "at the start")
        if group.rank == 1:
            with torch.no_grad():
                model[1].weight[0, 0] += 1e-7
        try:
            check_in_sync(model, group, "after the nudge")
        except ReplicaDivergenceError as error:
            return 0 if "rank 1: 1.weight" in str(error) and "after the nudge" in str(error) else 3
        return 4
    finally:
        group.close()


def test_replicas_that_diverge_are_an_error_naming_the_rank_and_parameter():
    assert launch(2, _diverge_on_rank_1, 0) == 0


@pytest.mark.filterwarnings("ignore::robustlr.evaluate.RobustnessWarning")
def test_sharded_evaluation_joins_to_the_whole(fmnist_model, fmnist):
    _, test = fmnist
    data = test.subset(range(50))
    attacks = {"pgd-linf": at_eps(lambda eps: build_attack("pgd-linf", fmnist_model, eps, steps=3, seed=0)),
               "fixed": build_attack("fgsm", fmnist_model, 0.1)}
    whole = evaluate(fmnist_model, data, attacks, [0.0, 0.05, 0.1], batch_size=16, progress=False)
    parts = [evaluate(fmnist_model, data.subset(block), attacks, [0.0, 0.05, 0.1], batch_size=16, progress=False)
             for block in (range(0, 17), range(17, 50))]
    merged = merge_evaluations(parts)
    assert merged.n == whole.n and torch.equal(merged.clean_correct, whole.clean_correct)
    for mine, theirs in zip(merged.attacks, whole.attacks, strict=True):
        assert (mine.attack, mine.eps) == (theirs.attack, theirs.eps)
        assert torch.equal(mine.robust, theirs.robust) and mine.robust_accuracy == theirs.robust_accuracy
        assert mine.mean_l2 == pytest.approx(theirs.mean_l2, rel=1e-5)
    assert [w.robust_accuracy for w in merged.worst_case] == [w.robust_accuracy for w in whole.worst_case]
    assert merged.worst_case_fixed.robust_accuracy == whole.worst_case_fixed.robust_accuracy
    # the accuracy checks are recomputed on the whole: a shard's large-ε warning does not survive the join
    assert any("largest" in message for part in parts for message in part.warnings)
    assert merged.warnings == whole.warnings


@pytest.mark.filterwarnings("ignore::robustlr.evaluate.RobustnessWarning")
def test_sharded_cascade_joins_to_the_whole(fmnist_model, fmnist):
    """A cascade evaluated per shard and joined equals the cascade of the whole: the masks, the counts of attacked
    points per stage, the stage numbers, the notes, and the norm means weighted by the points each stage attacked."""
    _, test = fmnist
    data = test.subset(range(40))
    attacks = {"fgsm": at_eps(lambda eps: build_attack("fgsm", fmnist_model, eps)),
               "pgd-linf": at_eps(lambda eps: build_attack("pgd-linf", fmnist_model, eps, steps=3, seed=0))}
    run = dict(eps_grid=[0.05, 0.1], batch_size=16, progress=False, cascade=True)
    whole = evaluate(fmnist_model, data, attacks, **run)
    merged = merge_evaluations([evaluate(fmnist_model, data.subset(block), attacks, **run)
                                for block in (range(0, 13), range(13, 40))])
    assert merged.cascade and merged.notes == whole.notes and merged.notes
    assert merged.stage_rows() and [(r["stage"], r["attacked"]) for r in merged.stage_rows()] == \
        [(r["stage"], r["attacked"]) for r in whole.stage_rows()]
    for mine, theirs in zip(merged.attacks, whole.attacks, strict=True):
        assert torch.equal(mine.robust, theirs.robust) and mine.family == theirs.family
        assert mine.mean_l2 == pytest.approx(theirs.mean_l2, rel=1e-5, nan_ok=True)


KILL_SETTINGS = {"method": "dense", "train_subset": 2000, "epochs": 3, "milestones": (2,), "gamma": 0.5,
                 "eval_n": 32, "eval_eps": (0.0, 0.1), "eval_steps": 2}


@pytest.mark.slow
def test_a_killed_distributed_run_resumes_under_torchrun_exactly(fmnist, tmp_path):
    """SIGKILL to the launcher's whole process group in epoch 2, then ``torchrun ... --resume``: the run ends
    with the weights, bit for bit, of an uninterrupted two-process run. (Compared with one process the weights
    agree to 1e-5 only for a few steps: this early phase of training is chaotic, a 1e-8 change of the weights
    grows to 6e-4 in one epoch of 18 such steps, so the rounding of the all-reduce is amplified likewise.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "robustlr", "train", *_argv(KILL_SETTINGS), "--no-progress", "--out", str(out)]

    reference = tmp_path / "reference"
    done = subprocess.run([*command(reference), "--nproc", "2"], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*command(out), "--nproc", "2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (out / "metrics.json").exists():  # epoch 1 is done: kill the whole group in epoch 2
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never finished epoch 1"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    progress = torch.load(out / "resume.pt", weights_only=True)["progress"]
    assert progress["epoch"] < KILL_SETTINGS["epochs"] and not (out / "summary.json").exists()

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    resumed = subprocess.run([*torchrun, *command(out)[1:], "--resume"], env=env, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == KILL_SETTINGS["epochs"] and summary["processes"] == 2
    for name in ("last.pt", "best.pt"):
        expected, got = (torch.load(run / name, weights_only=True) for run in (reference, out))
        assert expected.keys() == got.keys() and all(torch.equal(got[key], expected[key]) for key in expected)
    histories = [json.loads((run / "metrics.json").read_text())["history"] for run in (reference, out)]
    for one, other in zip(*histories, strict=True):
        assert {**one, "seconds": None} == {**other, "seconds": None}
    expected_eval = json.loads((reference / "summary.json").read_text())["evaluation"]
    for which in ("last", "best"):
        assert {**summary["evaluation"][which], "seconds": None} == {**expected_eval[which], "seconds": None}


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_nproc_below_one_is_a_one_line_error(nproc, tmp_path, capsys):
    assert main(["train", "--nproc", nproc, "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "nproc" in err and nproc in err and ">= 1" in err
    assert not (tmp_path / "run").exists()


def test_nproc_inside_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "run")]) == 2
    assert "inside torchrun" in one_line_error(capsys)


def test_resume_with_another_number_of_processes_is_refused(fmnist, tmp_path, capfd):
    out = tmp_path / "run"
    argv = ["train", *_argv({**SMALL, "method": "dense", "epochs": 1, "eval_n": 8, "eval_eps": (0.0,)}),
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert main([*argv[:-2], "--epochs", "2", "--nproc", "2", "--out", str(out), "--resume"]) == 2
    err = capfd.readouterr().err  # from the worker processes
    assert "trained by 1 process" in err and "--nproc 1" in err
