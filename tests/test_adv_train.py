"""Adversarial training (``robustlr train --adv ...``) on real Fashion-MNIST.

One epoch of PGD, LoRa-PGD or CondLR+PGD adversarial training of LeNet5 at L∞ ε = 0.1 beats one epoch of
standard training under PGD-L∞ at that ε by a wide margin; every method trains adversarially; the attack's
mode, seed and sample choice are what the docs say; the warm-start bank (rank-r factors for LoRa-PGD) is
used, sized 2r/n of a full bank and restored exactly on resume; model selection uses the evaluation attack on
the validation split; bad options are one-line errors.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from conftest import one_line_error
from robustlr.attacks import PGD, LoRaPGD
from robustlr.cli import main
from robustlr.train import AdversarialTraining, BatchContext, TrainConfig, TrainingInterrupted, train
from robustlr.train.adversarial import adversarial_mask, attack_seed
from robustlr.train.distributed import Distributed, block
from robustlr.train.warm_start import WarmStartLoRaPGD, WarmStartPGD

EPS = 0.1
# One epoch on 10 800 images (12 000 minus a 10 % validation split), batch 64; the PGD test accuracy at ε = 0.1
# is measured on 500 test images (standard error of a difference of two accuracies: about 0.03).
EFFECT = {"model": "lenet5", "train_subset": 12000, "val_fraction": 0.1, "epochs": 1, "batch_size": 64, "lr": 0.05,
          "momentum": 0.9, "eval_n": 500, "eval_eps": (EPS,), "eval_steps": 10, "robust_val_n": 200}
RUNS = {
    "standard-dense": {"method": "dense"},
    "pgd-dense": {"method": "dense", "adv": "pgd", "adv_eps": EPS, "adv_steps": 3},
    "lora-dense": {"method": "dense", "adv": "lora-pgd", "adv_eps": EPS, "adv_steps": 3, "adv_rank": 0.2},
    "standard-condlr": {"method": "condlr", "grad_scale": "exact"},
    "pgd-condlr": {"method": "condlr", "grad_scale": "exact", "adv": "pgd", "adv_eps": EPS, "adv_steps": 3},
}
SMALL = {"train_subset": 600, "epochs": 1, "eval_n": 16, "eval_eps": (0.0, 0.05), "eval_steps": 2, "robust_val_n": 32}


@pytest.fixture(scope="module")
def effect_runs(tmp_path_factory, fmnist):
    """``run(name)``: the summary of the one-epoch run ``name`` of RUNS (trained once per module)."""
    done: dict[str, dict] = {}

    def run(name: str) -> dict:
        if name not in done:
            out = tmp_path_factory.mktemp("effect") / name
            done[name] = train(TrainConfig(**EFFECT, **RUNS[name], out=str(out)), progress=False).summary
        return done[name]

    return run


def _pgd_accuracy(summary: dict) -> float:
    rows = summary["evaluation"]["last"]["robust_accuracy"]
    return next(row["robust_accuracy"] for row in rows if row["attack"] == "pgd-linf" and row["eps"] == EPS)


@pytest.mark.slow
@pytest.mark.parametrize(("adversarial", "standard", "margin"), [
    ("pgd-dense", "standard-dense", 0.2),      # measured 0.556 vs 0.200
    ("lora-dense", "standard-dense", 0.07),    # measured 0.330 vs 0.200
    ("pgd-condlr", "standard-condlr", 0.1),    # measured 0.470 vs 0.264
])
def test_one_epoch_of_adversarial_training_beats_standard_training_under_pgd(adversarial, standard, margin,
                                                                             effect_runs):
    robust, plain = effect_runs(adversarial), effect_runs(standard)
    assert _pgd_accuracy(robust) >= _pgd_accuracy(plain) + margin, (_pgd_accuracy(robust), _pgd_accuracy(plain))
    last = robust["evaluation"]["last"]
    assert last["clean_accuracy"] > 0.55  # robust, not collapsed
    # the evaluation attack (PGD-L∞, eval_steps, at the training ε) is the grid's PGD at ε = 0.1 here
    assert last["eval_attack_robust_accuracy"] == _pgd_accuracy(robust)
    adv = robust["adversarial"]
    assert adv["adv_seconds_per_epoch"] > 0 and "steps=3" in adv["train_attack"] and "steps=10" in adv["eval_attack"]
    assert robust["selection"] == {"by": "robust", "metric": "val_robust_accuracy"}
    if adversarial == "pgd-condlr":
        assert robust["final_metrics"]["kappa_max"] <= 1.1 + 1e-5


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["dense", "lowrank", "condlr", "orthogonal"])
def test_every_method_trains_adversarially_and_reports_both_attacks(method, fmnist, tmp_path, capsys):
    out = tmp_path / method
    options = ["--method", method, "--adv", "fgsm", "--adv-eps", "0.1", "--adv-fraction", "0.5"]
    argv = ["train", *options, "--train-subset", "600", "--epochs", "1", "--eval-n", "16", "--eval-eps", "0", "0.05",
            "--eval-steps", "2", "--robust-val-n", "32", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "training attack: PGD(" in printed and "alpha=0.125" in printed and "evaluation attack: PGD(" in printed
    record = json.loads((out / "metrics.json").read_text())["history"][0]
    assert record["adv_seconds"] > 0 and 0 <= record["val_robust_accuracy"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    assert (config["adv_steps"], config["adv_alpha"], config["select_by"]) == (1, 0.125, "robust")
    result = json.loads((out / "eval-last" / "result.json").read_text())["result"]
    # the evaluation attack at the training ε = 0.1 (outside the grid) is reported apart from the grid attacks
    extra = [row for row in result["attacks"] if row["attack"] == "eval-attack"]
    assert len(extra) == 1 and extra[0]["eps"] == 0.1 and "steps=2" in extra[0]["attack_repr"]
    assert summary["evaluation"]["last"]["eval_attack_robust_accuracy"] == extra[0]["robust_accuracy"]


def test_model_selection_uses_the_robust_validation_accuracy(fmnist, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 3}, method="dense", adv="pgd", adv_steps=2, lr=0.05,
                         out=str(tmp_path / "run"))
    result = train(config, progress=False)
    robust = [record["val_robust_accuracy"] for record in result.history]
    assert result.best_val_accuracy == max(robust) and result.best_epoch == robust.index(max(robust)) + 1
    assert json.loads((tmp_path / "run" / "best.pt.json").read_text())["epoch"] == result.best_epoch


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_trains_with_condlr_in_float32_linear_algebra(amp, fmnist, tmp_path):
    config = TrainConfig(**SMALL, method="condlr", adv="pgd", adv_steps=2, amp=amp, out=str(tmp_path / "run"))
    result = train(config, progress=False)
    record = result.history[0]
    assert torch.isfinite(torch.tensor(record["train_loss"])) and record["kappa_max"] <= 1.1 + 1e-5
    assert record["orth_error_max"] < 1e-4  # QR retraction and S projection ran in float32, outside autocast
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    scaler = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["extra"]["scaler"]
    assert ("scale" in scaler) == (amp == "fp16")  # the float16 loss scale is part of the resumable state


# ----------------------------------------------------------------------------------------------- the transform
def test_the_attacked_samples_are_a_spread_fraction_of_the_global_batch_whatever_the_sharding():
    for size, fraction in [(128, 1.0), (128, 0.5), (66, 0.3), (7, 0.0), (100, 0.25)]:
        chosen = adversarial_mask(torch.arange(size), fraction)
        assert int(chosen.sum()) == int(size * fraction)
        if 0 < fraction < 1:  # spread: no gap between attacked positions wider than 1/F + 1
            gaps = chosen.nonzero().squeeze(1).diff()
            assert int(gaps.max()) <= int(1 / fraction) + 1
        shards = [adversarial_mask(torch.tensor(list(block(size, rank, 3))), fraction) for rank in range(3)]
        assert torch.equal(torch.cat(shards), chosen)


def _context(n: int, epoch: int = 1, index: int = 0) -> BatchContext:
    return BatchContext(epoch, index, torch.arange(n), torch.arange(n), n)


def test_adversarial_examples_depend_on_the_seed_epoch_and_batch_only(fmnist_model, fmnist):
    x, y = fmnist[1].images[:8], fmnist[1].labels[:8]
    transform = AdversarialTraining(TrainConfig(adv="pgd", adv_steps=2), 8, (1, 28, 28), torch.device("cpu"),
                                    Distributed())
    first, _ = transform(fmnist_model, x, y, _context(8))
    again, _ = transform(fmnist_model, x, y, _context(8))
    later, _ = transform(fmnist_model, x, y, _context(8, epoch=2))
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert float((first - x).abs().max()) <= EPS + 1e-6 and not torch.equal(first, x)
    assert attack_seed(0, 1, 0) != attack_seed(0, 1, 1) != attack_seed(1, 1, 0)
    half = AdversarialTraining(TrainConfig(adv="pgd", adv_steps=2, adv_fraction=0.5), 8, (1, 28, 28),
                               torch.device("cpu"), Distributed())
    mixed, _ = half(fmnist_model, x, y, _context(8))
    changed = (mixed != x).flatten(1).any(dim=1)
    assert changed.tolist() == adversarial_mask(torch.arange(8), 0.5).tolist()
    assert torch.equal(mixed[changed], first[changed])  # per-sample seeding: same examples as in the full batch


class _RecordingBN(nn.Module):
    """Conv-BN-linear classifier that records the BatchNorm's mode at every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 26 * 26, 10)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.bn.training)
        return self.fc(self.bn(self.conv(x)).flatten(1))


@pytest.mark.parametrize(("bn", "expected"), [("eval", False), ("train", True)])
def test_the_attack_runs_in_the_configured_mode_and_the_model_is_left_in_train_mode(bn, expected):
    model = _RecordingBN()
    x, y = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    transform = AdversarialTraining(TrainConfig(adv="pgd", adv_steps=3, adv_bn=bn), 6, (1, 28, 28),
                                    torch.device("cpu"), Distributed())
    stats_before = model.bn.running_mean.clone()
    model.train()
    transform(model, x, y, _context(6))
    assert model.modes and set(model.modes) == {expected} and model.training and model.bn.training
    # train mode: BatchNorm uses batch statistics and updates its running statistics during the attack
    assert torch.equal(model.bn.running_mean, stats_before) != expected


# ----------------------------------------------------------------------------------------------- warm start
def test_warm_started_attacks_start_from_the_stored_perturbation(fmnist_model, fmnist):
    x, y = fmnist[1].images[:4], fmnist[1].labels[:4]
    known = torch.tensor([True, True, False, False])
    delta = torch.full_like(x, 0.05) * torch.tensor([1.0, -1.0, 1.0, 1.0])[:, None, None, None]
    tiny = WarmStartPGD(fmnist_model, EPS, "linf", steps=1, alpha=1e-6, seed=3, known=known, stored=[delta])
    x_adv, (stored,) = tiny.warm_run(x, y)
    torch.testing.assert_close(x_adv[:2], (x[:2] + delta[:2]).clamp(0, 1), rtol=0, atol=2e-6)
    fresh = PGD(fmnist_model, EPS, "linf", steps=1, alpha=1e-6, seed=3)(x, y)
    assert torch.equal(x_adv[2:], fresh[2:]) and torch.equal(stored, x_adv - x)

    u = torch.randn(4, 1, 28, 3, generator=torch.Generator().manual_seed(1)) * 7
    v = torch.randn(4, 1, 3, 28, generator=torch.Generator().manual_seed(2)) * 5
    lora = WarmStartLoRaPGD(fmnist_model, EPS, rank=3, norm="linf", steps=2, seed=3, known=known, stored=[u, v])
    u0, v0 = lora.factors(x, y, steps=0)  # the starting point
    torch.testing.assert_close(u0[:2], u[:2] / u[:2].flatten(1).norm(dim=1)[:, None, None, None])
    torch.testing.assert_close(v0[:2], v[:2] / v[:2].flatten(1).norm(dim=1)[:, None, None, None])
    fresh_u, fresh_v = LoRaPGD(fmnist_model, EPS, rank=3, norm="linf", seed=3).factors(x, y, steps=0)
    assert torch.equal(u0[2:], fresh_u[2:]) and torch.equal(v0[2:], fresh_v[2:])
    x_adv, (u2, v2) = lora.warm_run(x, y)  # two steps from there; the rows to store are the final factors
    final_u, final_v = lora.factors(x, y)
    assert torch.equal(u2, final_u) and torch.equal(v2, final_v) and not torch.equal(u2, u0)
    torch.testing.assert_close(x_adv, (x + lora.perturbation(u2, v2)).clamp(0, 1))


def test_the_lora_bank_stores_factors_at_2r_over_n_of_a_full_bank():
    lora = AdversarialTraining(TrainConfig(adv="lora-pgd", adv_rank=3, adv_warm_start=True), 1000, (1, 28, 28),
                               torch.device("cpu"), Distributed())
    pgd = AdversarialTraining(TrainConfig(adv="pgd", adv_warm_start=True), 1000, (1, 28, 28), torch.device("cpu"),
                              Distributed())
    assert lora.memory() == {"adv_bank_bytes": 1000 * 3 * 56 * 4, "adv_bank_full_bytes": 1000 * 784 * 4}
    assert lora.memory()["adv_bank_bytes"] / lora.memory()["adv_bank_full_bytes"] == pytest.approx(2 * 3 / 28)
    assert pgd.memory() == {"adv_bank_bytes": 1000 * 784 * 4, "adv_bank_full_bytes": 1000 * 784 * 4}


def test_a_warm_started_lora_run_stopped_mid_epoch_resumes_exactly_with_its_bank(fmnist, tmp_path, monkeypatch):
    settings = {**SMALL, "epochs": 2, "method": "dense", "adv": "lora-pgd", "adv_steps": 2, "adv_rank": 3,
                "adv_warm_start": True}
    reference = train(TrainConfig(**settings, out=str(tmp_path / "reference")), progress=False)
    calls = {"n": 0}
    original = AdversarialTraining.__call__

    def stop_in_epoch_2(self, model, x, y, context):
        calls["n"] += 1
        if calls["n"] == 4 + 2:  # 450 training images: 4 batches per epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, x, y, context)

    monkeypatch.setattr(AdversarialTraining, "__call__", stop_in_epoch_2)
    config = TrainConfig(**settings, out=str(tmp_path / "stopped"))
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after batch 2 of 4"):
        train(config, progress=False)
    monkeypatch.setattr(AdversarialTraining, "__call__", original)
    bank = torch.load(tmp_path / "stopped" / "resume.pt", weights_only=True)["extra"]["adversarial"]["bank"]
    assert [tuple(t.shape) for t in bank["tensors"]] == [(450, 1, 28, 3), (450, 1, 3, 28)]
    assert int(bank["known"].sum()) == 450  # every sample was attacked in epoch 1
    resumed = train(config, progress=False, resume=True)
    for name, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    final = [torch.load(tmp_path / run / "resume.pt", weights_only=True)["extra"]["adversarial"]["bank"]
             for run in ("reference", "stopped")]
    assert all(torch.equal(a, b) for a, b in zip(final[0]["tensors"], final[1]["tensors"]))
    assert reference.history[-1]["adv_bank_bytes"] == 450 * 3 * 56 * 4
    assert reference.summary["adversarial"]["adv_bank_full_bytes"] == 450 * 784 * 4


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("options", "needles"), [
    (["--adv", "pgd", "--adv-fraction", "1.5"], ["--adv-fraction", "1.5", "[0, 1]"]),
    (["--adv", "pgd", "--adv-fraction", "-0.1"], ["--adv-fraction", "-0.1", "[0, 1]"]),
    (["--adv", "pgd", "--adv-eps", "-0.1"], ["--adv-eps", "-0.1", ">= 0"]),
    (["--adv", "pgd", "--adv-rank", "3"], ["--adv-rank", "3", "lora-pgd"]),
    (["--adv", "cw"], ["--adv", "'cw'", "'pgd', 'fgsm', 'lora-pgd'"]),
    (["--adv", "pgd", "--adv-norm", "l1"], ["--adv-norm", "'l1'", "'linf', 'l2'"]),
    (["--adv", "fgsm", "--adv-steps", "5"], ["--adv-steps", "5", "fgsm"]),
    (["--adv", "lora-pgd", "--adv-alpha", "0.1"], ["--adv-alpha", "0.1", "lora-pgd"]),
    (["--adv", "lora-pgd", "--adv-rank", "0"], ["--adv-rank", "0", "(0, 1]"]),
    (["--adv", "pgd", "--adv-bn", "frozen"], ["--adv-bn", "'frozen'", "'eval', 'train'"]),
    (["--adv", "pgd", "--adv-warm-start", "--augment"], ["--adv-warm-start", "--augment"]),
    (["--adv-eps", "0.1"], ["--adv-eps", "0.1", "without --adv"]),
    (["--select-by", "robust"], ["--select-by", "robust", "needs --adv"]),
    (["--amp", "fp8"], ["--amp", "'fp8'", "'bf16', 'fp16'"]),
    (["--method", "dense", "--theta", "0.1"], ["--theta", "condlr"]),
    (["--adv", "lora-pgd", "--adv-rank", "40"], ["--adv-rank", "40", "[1, 28]"]),
])
def test_bad_adversarial_options_are_one_line_errors_naming_the_option(options, needles, fmnist, tmp_path, capsys):
    code = main(["train", "--train-subset", "600", "--epochs", "1", "--no-progress", *options,
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = one_line_error(capsys)
    for needle in needles:  # every message names the option as typed, never the Python field
        assert needle in err, needle


def test_defaults_are_resolved_into_the_stored_config():
    fast = TrainConfig(adv="fgsm", adv_eps=0.2)
    assert (fast.adv_norm, fast.adv_steps, fast.adv_alpha, fast.adv_fraction, fast.adv_bn) == ("linf", 1, 0.25, 1.0,
                                                                                               "eval")
    pgd = TrainConfig(adv="pgd", adv_norm="l2")
    assert (pgd.adv_eps, pgd.adv_steps, pgd.adv_alpha, pgd.adv_rank, pgd.select_by) == (1.0, 10, 0.18, None, "robust")
    assert TrainConfig(adv="lora-pgd").adv_rank == 0.1 and TrainConfig().select_by == "clean"
    assert TrainConfig.from_dict(json.loads(json.dumps(pgd.to_dict()))) == pgd
