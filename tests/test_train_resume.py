"""Exact resume of ``robustlr train`` on a real Fashion-MNIST subset.

A run killed with SIGKILL in the middle of epoch 2 and resumed with ``--resume`` ends with the same weights,
bit for bit, as an uninterrupted run; SIGTERM saves a resumable state at a batch boundary and exits non-zero
with a message, and resuming from that mid-epoch state is exact too; a resume with another configuration is
refused, naming the keys that differ, while more epochs extend the run.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustlr.cli import main
from robustlr.train import TrainConfig, TrainingInterrupted, train
from robustlr.train.signals import StopSignals

EPOCHS = 3
# a milestone inside the run makes the scheduler's state matter; 2250 training images = 18 batches per epoch
ARGS = ["--train-subset", "3000", "--epochs", str(EPOCHS), "--milestones", "2", "--gamma", "0.5",
        "--eval-n", "32", "--eval-eps", "0", "0.05", "--eval-steps", "2"]
TIMEOUT = 600
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process, like the rest of the suite (conftest.py)
_PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


def _command(method: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "robustlr", "train", "--method", method, *ARGS, "--out", str(out), *extra]


def _run(method: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(_command(method, out, *extra), capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _signal_during_epoch(method: str, out: Path, epoch: int, signum: int) -> tuple[int, str]:
    """Start a run, send ``signum`` once its progress bar shows ``epoch`` partly done; return (exit code, stderr)."""
    proc = subprocess.Popen(_command(method, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    assert proc.stderr is not None
    prefix = f"epoch {epoch}/{EPOCHS}:".encode()
    received = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                chunk = os.read(proc.stderr.fileno(), 1 << 16)
                if not chunk:
                    break
                received += chunk
            bars = [part for part in re.split(rb"[\r\n]", received) if part.startswith(prefix)]
            if any(0 < int(done) < int(total) for bar in bars for done, total in _PROGRESS.findall(bar)):
                proc.send_signal(signum)
                rest = proc.communicate(timeout=TIMEOUT)[1]
                return proc.returncode, (received + rest).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"the run never showed epoch {epoch} in progress:\n{received[-3000:].decode(errors='replace')}")


def _resume_progress(out: Path) -> dict:
    return torch.load(out / "resume.pt", weights_only=True)["progress"]


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = (torch.load(path, weights_only=True) for path in (a, b))
    assert list(first) == list(second)
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second[key]), key
        else:
            assert value == second[key], key


def _assert_same_history(a: Path, b: Path) -> None:
    """Every metric of every epoch is equal, apart from the timing."""
    first, second = (_resume_progress(path)["history"] for path in (a, b))
    for one, other in zip(first, second, strict=True):
        assert {**one, "seconds": None} == {**other, "seconds": None}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fmnist) -> dict[str, Path]:
    """Uninterrupted CondLR and dense runs."""
    runs = {}
    for method in ("condlr", "dense"):
        out = tmp_path_factory.mktemp("uninterrupted") / method
        _run(method, out, "--no-progress")
        runs[method] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["condlr", "dense"])
def test_sigkill_in_epoch_2_then_resume_gives_bitwise_identical_weights(method, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    code, _ = _signal_during_epoch(method, out, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    progress = _resume_progress(out)
    assert (progress["epoch"], progress["batch"]) == (1, 0)  # killed in epoch 2, before its end
    assert not (out / "summary.json").exists()
    _run(method, out, "--resume", "--no-progress")
    _assert_same_weights(out / "last.pt", uninterrupted[method] / "last.pt")
    _assert_same_weights(out / "best.pt", uninterrupted[method] / "best.pt")
    _assert_same_history(out, uninterrupted[method])


@pytest.mark.slow
def test_sigterm_saves_a_mid_epoch_state_exits_nonzero_and_resumes_exactly(uninterrupted, tmp_path):
    out = tmp_path / "terminated"
    code, err = _signal_during_epoch("condlr", out, 2, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert "SIGTERM" in err and "--resume" in err and "resume.pt" in err and "Traceback" not in err
    progress = _resume_progress(out)
    assert progress["epoch"] == 1 and 0 < progress["batch"] < 18 and progress["tally"]["count"] > 0
    _run("condlr", out, "--resume", "--no-progress")
    _assert_same_weights(out / "last.pt", uninterrupted["condlr"] / "last.pt")
    _assert_same_history(out, uninterrupted["condlr"])


@pytest.mark.slow
def test_resume_refuses_another_configuration_and_accepts_more_epochs(uninterrupted, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted["condlr"], out)
    before = (out / "resume.pt").read_bytes()
    argv = ["train", "--method", "condlr", *ARGS, "--out", str(out), "--resume", "--no-progress"]
    assert main([*argv, "--lr", "0.05", "--tau", "0.2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "lr (stored 0.1, given 0.05)" in err and "tau (stored 0.1, given 0.2)" in err and "epochs" in err
    assert (out / "resume.pt").read_bytes() == before
    assert main([*argv, "--epochs", str(EPOCHS + 1)]) == 0
    assert _resume_progress(out)["epoch"] == EPOCHS + 1
    assert main(["train", *ARGS, "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


class _NoisyBatches:
    """A batch transform drawing from the global RNG (as a random-start attack would); it can SIGTERM its own
    process at one call."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, model, x, y, context):
        self.calls += 1
        if self.calls == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1), y


def test_mid_epoch_stop_with_augmentation_and_global_rng_use_resumes_exactly(fmnist, tmp_path):
    settings = {"train_subset": 600, "epochs": 2, "augment": True, "eval_n": 16, "eval_eps": (0.0,), "eval_steps": 1}
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    train(TrainConfig(**settings, out=str(reference)), progress=False, batch_transform=_NoisyBatches())
    config = TrainConfig(**settings, out=str(stopped))
    with pytest.raises(TrainingInterrupted, match="SIGTERM in epoch 2 after batch 2 of 4"):  # 450 images: 4 batches
        train(config, progress=False, batch_transform=_NoisyBatches(stop_at=4 + 2))
    progress = _resume_progress(stopped)
    assert (progress["epoch"], progress["batch"]) == (1, 2)
    train(config, progress=False, resume=True, batch_transform=_NoisyBatches())
    _assert_same_weights(stopped / "last.pt", reference / "last.pt")
    _assert_same_history(stopped, reference)


def test_signals_are_deferred_in_the_loop_and_raise_at_once_in_immediate_blocks():
    previous = signal.getsignal(signal.SIGINT)
    def stopped(signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(signum, "stopped")

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only recorded
        assert stop.signum == signal.SIGINT
        with pytest.raises(TrainingInterrupted):  # a pending request raises on entering an immediate block
            with stop.immediate(stopped):
                pass
    with StopSignals() as stop, pytest.raises(TrainingInterrupted) as caught:
        with stop.immediate(stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is previous
