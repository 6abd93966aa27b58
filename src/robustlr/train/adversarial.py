"""Adversarial training: a :data:`~robustlr.train.step.BatchTransform` that replaces part of every batch by
adversarial examples of the current model.

Min-max training (Madry et al., ICLR 2018): ``min_θ E_{(x,y)} max_{‖δ‖≤ε} ℓ(f_θ(x + δ), y)``; the inner maximum is
approximated by the configured attack (:mod:`robustlr.train.adv_config`) and the outer step is the trainer's.

* Which samples: ``⌊F·B⌋`` of each global batch of ``B``, evenly spread: the sample at position ``p`` of the
  global batch is attacked iff ``⌊(p+1)F⌋ > ⌊pF⌋``. A process attacks only its shard; the rule depends on the
  global position only, so a distributed run attacks the same samples as a single process.
* Randomness: the attack of batch ``b`` of epoch ``e`` is seeded by :func:`attack_seed` ``(seed, e, b)``, and the
  attacks seed every sample from (that seed, a key hashed from the image's values): adversarial examples are a function of the
  model, the sample and the run's seed, so exact resume and the distributed/single-process equality hold.
* BatchNorm and dropout: the attack runs on the bare model in eval mode (``adv_bn="eval"``, the default; the
  attacks switch to eval and restore the mode), or in train mode (``adv_bn="train"``, as Madry et al.'s CIFAR code
  did): the model is then wrapped in :class:`TrainModeView`, whose ``eval()`` does nothing, so BatchNorm uses
  batch statistics (and updates its running statistics) and dropout is active while the attack runs. The update
  always runs in train mode.
* Mixed precision (``amp="fp16"``): the attack runs under the update's float16 autocast with the fixed loss scale
  :data:`~robustlr.attacks.base.AUTO_LOSS_SCALE` (2¹⁰ on its per-sample summed objective), so its input gradients
  do not underflow.  Not the ``GradScaler``'s scale: reading that is a host round trip per step, it is tuned to
  the batch-mean loss of the parameter gradients (2¹⁶ / B per sample), and the attack normalises its gradient
  per sample, so any scale between underflow and overflow gives the same steps.
* Host round trips: the attack's own (one per call, its fused input check); choosing the samples, the seed and
  the warm-start bank read nothing from the device.
* Warm start (``adv_warm_start``): see :mod:`robustlr.train.warm_start`; in a distributed run every process
  gathers the new perturbations of all shards with tensor collectives on the device (padded to the largest
  shard, no pickling), so all hold the same bank.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from robustlr.attacks import PGD, Attack, LoRaPGD
from robustlr.attacks.base import AUTO_LOSS_SCALE
from robustlr.attacks.projections import resolve_rank

from .config import TrainConfig
from .distributed import Distributed
from .step import BatchContext
from .warm_start import PerturbationBank, WarmStartLoRaPGD, WarmStartPGD

__all__ = ["AdversarialTraining", "TrainModeView", "adversarial_mask", "attack_seed"]


def attack_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the attack on batch ``index`` of ``epoch`` in a run seeded by ``seed`` (a 63-bit hash of the three)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8, person=b"robustlr-adv").digest()
    return int.from_bytes(digest, "little") >> 1


def adversarial_mask(positions: Tensor, fraction: float) -> Tensor:
    """Which of the global-batch ``positions`` are attacked: ``⌊(p+1)F⌋ > ⌊pF⌋`` (``⌊F·B⌋`` of ``B``, spread)."""
    p = positions.to(torch.float64)
    return torch.floor((p + 1) * fraction) > torch.floor(p * fraction)


class TrainModeView(nn.Module):
    """``module`` behind a view whose ``train()`` / ``eval()`` do nothing: an attack switching its model to eval
    mode leaves ``module`` in the mode it is in (train mode for ``adv_bn="train"``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> TrainModeView:
        return self


class AdversarialTraining:
    """The adversarial :data:`~robustlr.train.step.BatchTransform` of ``config`` (see the module docstring).

    Args:
        config: a config with ``adv`` set.
        train_size: samples in the training split (the size of the warm-start bank).
        image_shape: ``(C, H, W)``.
        device: the training device (where the bank lives).
        group: the processes of the run.

    Raises:
        ValueError: if ``adv_rank`` does not fit the images (an int above ``min(H, W)``).
    """

    def __init__(self, config: TrainConfig, train_size: int, image_shape: tuple[int, int, int],
                 device: torch.device, group: Distributed) -> None:
        if config.adv is None:
            raise ValueError("config.adv must name the attack of adversarial training; got None")
        self.config = config
        self.group = group
        self.bank: PerturbationBank | None = None
        channels, height, width = image_shape
        rank = None if config.adv_rank is None else resolve_rank(config.adv_rank, min(height, width), "adv_rank")
        if config.adv_warm_start:
            shapes = ([(channels, height, rank), (channels, rank, width)] if rank is not None
                      else [tuple(image_shape)])
            self.bank = PerturbationBank(train_size, shapes, tuple(image_shape), device)

    def _settings(self) -> dict[str, Any]:
        c = self.config
        scale = {"loss_scale": AUTO_LOSS_SCALE} if c.amp == "fp16" else {}
        if c.adv == "lora-pgd":
            return {"rank": c.adv_rank, "norm": c.adv_norm, "steps": c.adv_steps, **scale}
        return {"norm": c.adv_norm, "steps": c.adv_steps, "alpha": c.adv_alpha, "random_start": True, **scale}

    def attack(self, model: nn.Module, seed: int) -> Attack:
        """The training attack on ``model``, seeded by ``seed``."""
        kind: type[Attack] = LoRaPGD if self.config.adv == "lora-pgd" else PGD
        return kind(model, self.config.adv_eps, seed=seed, **self._settings())

    def warm_attack(self, model: nn.Module, seed: int, known: Tensor,
                    stored: list[Tensor]) -> WarmStartPGD | WarmStartLoRaPGD:
        """The warm-started training attack: samples with ``known`` set start from their ``stored`` rows."""
        kind = WarmStartLoRaPGD if self.config.adv == "lora-pgd" else WarmStartPGD
        return kind(model, self.config.adv_eps, seed=seed, known=known, stored=stored, **self._settings())

    def describe(self) -> str:
        """The training attack as text (its seed is derived per batch by :func:`attack_seed`)."""
        return repr(self.attack(nn.Identity(), self.config.seed)).replace(
            f"seed={self.config.seed}", "seed=attack_seed(seed, epoch, batch)")

    def memory(self) -> dict[str, int]:
        """``adv_bank_bytes`` (stored perturbations) and ``adv_bank_full_bytes`` (a full ``N·C·H·W`` bank), when
        warm-starting; else empty."""
        if self.bank is None:
            return {}
        return {"adv_bank_bytes": self.bank.nbytes(), "adv_bank_full_bytes": self.bank.full_bytes()}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, context: BatchContext) -> tuple[Tensor, Tensor]:
        """``(x', y)`` with ``x'_i = A(x_i, y_i)`` for the chosen samples (:func:`adversarial_mask` of their global
        positions) and ``x'_i = x_i`` for the others; ``A`` is the attack on ``model`` seeded by
        :func:`attack_seed` of the batch's epoch and index."""
        chosen = adversarial_mask(context.positions, self.config.adv_fraction)
        rows = chosen.nonzero().squeeze(1).to(x.device)
        if self.config.adv_bn == "train":
            model.train()
            model = TrainModeView(model)
        seed = attack_seed(self.config.seed, context.epoch, context.index)
        every = rows.numel() == x.shape[0]  # adv_fraction = 1: no gather, no merge, no copy
        x_sel, y_sel = (x, y) if every else (x[rows], y[rows])
        if self.bank is not None:
            x_adv = self._warm_attack(self.bank, model, seed, x_sel, y_sel, context.ids[chosen],
                                      self.group.max_shard(context.global_size))
        elif rows.numel():
            x_adv = self.attack(model, seed)(x_sel, y_sel)
        else:
            return x, y
        if every:
            return x_adv.to(x.dtype), y
        out = x.clone()
        out[rows] = x_adv.to(out.dtype)
        return out, y

    def _warm_attack(self, bank: PerturbationBank, model: nn.Module, seed: int, x: Tensor, y: Tensor,
                     ids: Tensor, capacity: int) -> Tensor:
        """Attack from the bank's perturbations and store the new ones (those of every process, gathered with
        tensor collectives on the device: at most ``capacity`` rows per process)."""
        known, stored = bank.lookup(ids)
        if ids.numel():
            x_adv, rows = self.warm_attack(model, seed, known, stored).warm_run(x, y)
        else:  # nothing to attack here, but the other processes' rows must still be gathered
            x_adv, rows = x, stored
        bank.store_all(ids, rows, self.group, capacity)
        return x_adv

    def state_dict(self) -> dict[str, Any]:
        """The warm-start bank (empty without one)."""
        return {} if self.bank is None else {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
