"""Shared fixtures: small models on synthetic input, and a CNN trained on real Fashion-MNIST."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch
from torch import nn

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"

# One CPU thread: the suite's tensors are small, and on a loaded 2-core machine two OpenMP threads per
# process oversubscribe the cores and slow small operations by an order of magnitude.
torch.set_num_threads(1)


def require(module: str, how: str) -> ModuleType:
    """Import ``module``; skip the test without it, except under CI (``CI=true``), where its absence fails."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is required under CI ({how}): {exc}", pytrace=False)
    return pytest.importorskip(module, reason=how)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command wrote to stderr, required to be one ``robustlr: error: …`` line (warning lines such
    as "no --checkpoint given" aside) and no traceback; returns that line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "Warning: " not in line]
    assert len(lines) == 1 and lines[0].startswith("robustlr: error: "), err
    return lines[0]


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line on ``argv``; require exit code 2 and :func:`one_line_error`; return that line."""
    from robustlr.cli import main

    code = main(argv)
    line = one_line_error(capsys)
    assert code == 2, line
    return line


def small_cnn(in_channels: int = 1, num_classes: int = 10, size: int = 28, seed: int = 0) -> nn.Module:
    """A small CNN (conv-pool-conv-pool-fc) with LeakyReLU, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * (size // 4) ** 2, num_classes),
    )


@pytest.fixture
def cnn() -> nn.Module:
    return small_cnn()


@pytest.fixture
def rgb_cnn() -> nn.Module:
    return small_cnn(in_channels=3, size=16, seed=1)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)


@pytest.fixture
def rgb_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)


@pytest.fixture(scope="session")
def fmnist():
    """Real Fashion-MNIST (Debian's dataset-fashion-mnist). CI installs it; its absence is a failure."""
    if not os.path.isdir(FMNIST_DIR):
        pytest.fail(f"{FMNIST_DIR} is missing: install it with `apt-get install -y dataset-fashion-mnist`")
    from robustlr.data import load_dataset

    return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def fmnist_model(fmnist):
    """A small CNN trained for one epoch on 20 000 real Fashion-MNIST images (a few seconds on CPU)."""
    from robustlr.train.quick import fit

    train, _ = fmnist
    model = small_cnn(seed=0)
    fit(model, train.images[:20000], train.labels[:20000], epochs=1, lr=0.05, batch_size=128, seed=0)
    return model
