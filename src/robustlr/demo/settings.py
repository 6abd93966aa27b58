"""What the demo trains and attacks: the full version (minutes on 2 CPU cores) and ``--quick`` (under a minute)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..attacks.projections import resolve_rank
from ..checks import check_device, check_int
from ..reproduce.settings import eps_list
from ..train import TrainConfig

__all__ = ["IMAGE_SIDE", "MODELS", "NORMS", "DemoSettings"]

MODELS: dict[str, dict[str, object]] = {
    "dense": {"method": "dense"},
    "low-rank": {"method": "lowrank", "rank": 0.2},
    "condlr": {"method": "condlr", "rank": 0.2, "tau": 0.1, "grad_scale": "exact"},
}
"""The three networks: name -> :class:`~robustlr.train.TrainConfig` keys (rank fraction 0.2 of each layer's
``min(n, m)``; CondLR keeps ``κ(S) ≤ 1 + τ`` with ``τ = 0.1``, with the exact Riemannian gradient scale,
which learns markedly faster in a few epochs than the default (σ_min/σ_max)² scale)."""

IMAGE_SIDE = 28
"""Height and width of a Fashion-MNIST image: LoRa-PGD's rank is at most this."""

NORMS: dict[str, tuple[str, ...]] = {"linf": ("fgsm", "pgd-linf"), "l2": ("pgd-l2", "lora-pgd")}
"""Threat model -> the attacks evaluated in it (names of :func:`robustlr.attacks.build_attack`)."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of one demo.

    Attributes:
        train_subset: the first training images used (``None``: all 60 000), of which ``val_fraction`` are held
            out for validation.
        epochs: training epochs of every model (SGD, lr 0.02, momentum 0.9, the same for the three).
        n_test: test images attacked.
        eps_linf / eps_l2: ε grids (> 0) of the L∞ attacks (FGSM, PGD-L∞) and of the L2 attacks (PGD-L2,
            LoRa-PGD), in pixel units of ``[0, 1]`` images; ε = 0 is the clean accuracy, measured once.
        summary_linf / summary_l2: the budgets shown in the printed summary and used for the spectrum study.
        steps: iterations of PGD and LoRa-PGD.
        lora_rank: LoRa-PGD rank: a fraction in (0, 1] of the image side (0.2 · 28 → r = 6) or an int in [1, 28].
        n_spectrum: test images whose PGD perturbations are decomposed.
        seed: seed of the training runs (initialisation, split, data order) and of the attacks.
        device: where the networks train and are attacked (``cpu``, ``cuda``, ``cuda:1``, …).
    """

    train_subset: int | None = 20000
    val_fraction: float = 0.1
    epochs: int = 3
    n_test: int = 1000
    eps_linf: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    eps_l2: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    summary_linf: float = 0.05
    summary_l2: float = 1.0
    steps: int = 10
    lora_rank: int | float = 0.2
    n_spectrum: int = 256
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.train_subset is not None:
            check_int("train_subset", self.train_subset, 100)
        for name in ("epochs", "n_test", "steps", "n_spectrum"):
            check_int(name, getattr(self, name), 1)
        if self.n_spectrum > self.n_test:
            raise ValueError(f"n_spectrum must be at most n_test = {self.n_test}, got {self.n_spectrum}")
        resolve_rank(self.lora_rank, IMAGE_SIDE, "lora_rank")
        check_device("device", self.device)
        for grid, summary in (("eps_linf", "summary_linf"), ("eps_l2", "summary_l2")):
            values = getattr(self, grid)
            if eps_list(grid, values) != list(values):
                raise ValueError(f"{grid} must be a non-empty increasing tuple of budgets > 0, got {values!r}")
            if getattr(self, summary) not in values:
                raise ValueError(f"{summary} must be one of {grid} = {values!r}, got {getattr(self, summary)!r}")

    @classmethod
    def quick(cls, seed: int = 0, device: str = "cpu") -> DemoSettings:
        """The sub-minute version: one epoch on 6 000 images, 200 test images, short grids."""
        return cls(train_subset=6000, epochs=1, n_test=200, eps_linf=(0.05, 0.1), eps_l2=(1.0, 2.0),
                   steps=5, n_spectrum=64, seed=seed, device=device)

    def train_config(self, name: str, out: Path, data_root: str | None = None) -> TrainConfig:
        """The training run of model ``name`` (a key of :data:`MODELS`) in ``out/name``."""
        if name not in MODELS:
            raise ValueError(f"name must be one of {list(MODELS)}, got {name!r}")
        return TrainConfig.from_dict({
            "model": "lenet5", "data": "fashion-mnist", **MODELS[name], "epochs": self.epochs, "lr": 0.02,
            "momentum": 0.9, "milestones": [], "batch_size": 128, "seed": self.seed,
            "val_fraction": self.val_fraction, "train_subset": self.train_subset,
            # the demo evaluates every model itself; the trainer's own evaluation is kept to a clean pass
            "eval_eps": [0.0], "eval_n": self.n_test, "eval_steps": 1,
            "out": str(out / name), "data_root": data_root, "device": self.device,
        })
