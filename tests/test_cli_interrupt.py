"""Ctrl-C and SIGTERM on the command line: one line ``robustlr: interrupted (...); to continue: <how, for that
command>`` and exit code 128 + the signal's number, from every command; a real SIGINT to ``robustlr train``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import robustlr.cli
from robustlr.cli import main
from robustlr.cli.options import DEFAULT_CONTINUE_HINT
from robustlr.train import TrainConfig, TrainingInterrupted

COMMANDS = [["demo"], ["evaluate"], ["attack"], ["spectrum"], ["train"], ["reproduce", "condlr-table"], ["results"], ["export"], ["compress"]]
SAVED = "training stopped by SIGINT in epoch 1 after batch 2 of 4; the resumable state is saved in 'x/resume.pt'"


def _hint(argv: list[str]) -> str:
    """The command's own continue_hint default, or the generic one."""
    return getattr(robustlr.cli.build_parser().parse_args(argv), "continue_hint", None) or DEFAULT_CONTINUE_HINT


def _stopping(monkeypatch: pytest.MonkeyPatch, stop: BaseException) -> None:
    """Make every command's handler raise ``stop`` (the parser is otherwise the real one)."""
    real = robustlr.cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for command in sub.choices.values():
            command.set_defaults(handler=lambda args: (_ for _ in ()).throw(stop))
        return parser

    monkeypatch.setattr(robustlr.cli, "build_parser", build)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
@pytest.mark.parametrize(("stop", "code", "said"), [
    (KeyboardInterrupt(), 130, "robustlr: interrupted; "),
    (TrainingInterrupted(signal.SIGINT, SAVED), 130, f"robustlr: interrupted ({SAVED}); "),
    (TrainingInterrupted(signal.SIGTERM, "stopped by SIGTERM"), 128 + signal.SIGTERM,
     "robustlr: interrupted (stopped by SIGTERM); "),
], ids=["ctrl-c", "sigint-saved", "sigterm"])
def test_every_command_says_interrupted_and_how_to_continue_it(argv, stop, code, said, monkeypatch, capsys):
    hint = _hint(argv)
    _stopping(monkeypatch, stop)
    assert main(argv) == code
    assert _one_line(capsys) == f"{said}to continue: {hint}"


def test_each_command_continues_its_own_way():
    assert _hint(["train"]) == "run the same command with --resume"
    assert _hint(["reproduce", "condlr-table"]) == "rerun the same command: finished runs are kept"
    assert _hint(["results"]) == "rerun the command"
    assert "--resume" not in _hint(["demo"])  # the demo has no --resume


def test_train_names_the_new_run_directory_it_made(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def stopped(config: TrainConfig, progress: bool, resume: bool):
        assert Path(config.out).is_dir() and not any(Path(config.out).iterdir())  # created, empty
        raise TrainingInterrupted(signal.SIGINT, SAVED)

    monkeypatch.setattr("robustlr.cli.train_cmd.train", stopped)
    assert main(["train", "--no-progress"]) == 130
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("train-")
    assert _one_line(capsys).endswith(f"to continue: run the same command with --out {Path('runs') / runs[0].name} "
                                      "--resume")


def test_a_worker_of_nproc_reports_the_stop_once(monkeypatch, capsys):
    from robustlr.cli import train_cmd

    monkeypatch.setattr(train_cmd, "train", lambda *a, **k: (_ for _ in ()).throw(
        TrainingInterrupted(signal.SIGTERM, "stopped by SIGTERM")))
    assert train_cmd._train_worker(TrainConfig(), False, False, "HINT") == 128 + signal.SIGTERM
    assert _one_line(capsys) == "robustlr: interrupted (stopped by SIGTERM); to continue: HINT"


def test_sigint_to_a_real_training_run_saves_and_says_how_to_resume(fmnist, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "robustlr", "train", "--method", "dense", "--train-subset", "600",
               "--epochs", "200", "--eval-n", "16", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # metrics.json: an epoch is done, training is under way
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("robustlr: interrupted (training stopped by SIGINT")
    assert lines[0].endswith("; to continue: run the same command with --resume")
    assert (out / "resume.pt").exists()
