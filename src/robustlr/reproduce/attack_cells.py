"""The attacks of ``kind = "attack-table"`` (and of ``"suite-table"``), one *cell* per (attack, init, rank), all in L2.

=============  =================================================================================================
attack         what it is (LoRa-PGD brief)
=============  =================================================================================================
``pgd-l2``     full-rank PGD-L2 of the registry: α = 1.8ε/steps, random start (§4.1; the baseline)
``lora-pgd``   :class:`~robustlr.attacks.LoRaPGD` at rank r per channel, ``init`` ``"lora"`` (U random, V = 0) or
               ``"svd"`` (rank-r truncation of a one-step gradient perturbation; the paper's "fgsm" warm start)
               (§1.2–1.5)
``rank-pgd``   :class:`~robustlr.attacks.RankProjectedPGD`: the same PGD-L2 run (same seed, random start, steps)
               whose final perturbation is truncated to rank r per channel (the paper's ``PGDL2_proj_r``, §2.3)
``lora-apgd``  :class:`~robustlr.attacks.lora_apgd.LoRaAPGD` at rank r per channel: LoRa-PGD's factors under APGD's
               step-size schedule and momentum (``suite-table``)
``apgd-ce``    APGD on the cross-entropy, L2, of the registry (``apgd-ce-l2``; ``suite-table``)
=============  =================================================================================================

Each cell is evaluated over the whole ε grid by :func:`robustlr.evaluate.evaluate` (robust accuracy, seconds
in the attack, mean ‖δ‖₂ and mean nuclear norm) and stored as one JSON file, so the table resumes cell by cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import LoRaPGD, RankProjectedPGD, build_attack
from ..attacks.base import Attack
from ..attacks.lora_apgd import LoRaAPGD
from ..attacks.projections import resolve_rank
from ..evaluate import at_eps, evaluate
from ..files import file_stem
from .records import read_record, write_record

__all__ = ["Cell", "cells", "run_cell", "read_cell", "CELL_SETTINGS"]

CELL_SETTINGS = ("eps", "steps", "n", "seed", "checkpoint")
"""The settings a stored cell was computed with; a cell stored with other values is computed again."""

_PAYLOAD = ("side", "rank", "state_bytes", "n", "clean", "results")
"""The keys of a cell record that its rows read; a record without them is computed again."""


@dataclass(frozen=True)
class Cell:
    """One attack of the table: ``attack`` (one of the module table), LoRa-PGD's ``init`` and the per-channel
    ``rank`` (an int, or a fraction of the image side) of the ranked attacks."""

    attack: str
    init: str | None = None
    rank: int | float | None = None

    @property
    def key(self) -> str:
        """File-name stem of the cell, e.g. ``lora-pgd_svd_r0.1``."""
        parts = [self.attack, self.init, None if self.rank is None else f"r{self.rank}"]
        return file_stem("_".join(p for p in parts if p))

    def build(self, model: nn.Module, eps: float, steps: int, seed: int) -> Attack:
        """The cell's attack at budget ``eps`` (see the module table)."""
        if self.attack == "pgd-l2":
            return build_attack("pgd-l2", model, eps, steps=steps, seed=seed)
        if self.attack == "lora-pgd":
            return LoRaPGD(model, eps, rank=self.rank, norm="l2", steps=steps, init=self.init, seed=seed)
        if self.attack == "lora-apgd":
            return LoRaAPGD(model, eps, rank=self.rank, norm="l2", steps=steps, seed=seed)
        if self.attack == "apgd-ce":
            return build_attack("apgd-ce-l2", model, eps, steps=steps, seed=seed)
        return RankProjectedPGD(model, eps, rank=self.rank, norm="l2", steps=steps, random_start=True, seed=seed)


def cells(ranks: list[int | float], inits: list[str]) -> list[Cell]:
    """PGD-L2, then LoRa-PGD for every rank and init, then rank-projected PGD for every rank."""
    lora = [Cell("lora-pgd", init, rank) for rank in ranks for init in inits]
    return [Cell("pgd-l2"), *lora, *(Cell("rank-pgd", None, rank) for rank in ranks)]


def run_cell(cell: Cell, model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
             path: Path) -> None:
    """Evaluate ``cell`` on ``(x, y)`` at every ε of ``settings["eps"]`` and write its record to ``path``.

    The record holds the clean accuracy, per ε the :class:`~robustlr.evaluation.result.AttackResult` summary,
    the resolved rank ``r`` and the bytes of the attack's optimisation state per image (the factors U, V for
    LoRa-PGD, ``C·r·(H+W)`` floats; the perturbation, ``C·H·W`` floats, for PGD and rank-projected PGD).
    """
    def factory(eps: float) -> Attack:
        return cell.build(model, eps, settings["steps"], settings["seed"])

    result = evaluate(model, (x, y), {cell.key: at_eps(factory)}, settings["eps"],
                      batch_size=settings["batch_size"], progress=False, nuclear=True)
    image = (1, *x.shape[1:])
    write_record(path, settings, CELL_SETTINGS, {
        "cell": cell.__dict__, "side": min(image[-2:]),
        "rank": None if cell.rank is None else resolve_rank(cell.rank, min(image[-2:])),
        "state_bytes": factory(settings["eps"][0]).state_bytes(image),
        "n": result.n, "clean": result.clean_accuracy, "results": [r.to_dict() for r in result.attacks],
        "warnings": result.warnings,
    })


def read_cell(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a cell stored at ``path`` with the current ``settings``, else ``None`` (also for a record that
    cannot be read: :func:`~robustlr.reproduce.records.read_record`)."""
    return read_record(path, settings, CELL_SETTINGS, _PAYLOAD)
