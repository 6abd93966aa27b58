"""Warm-started adversarial training (an extension beyond the papers): a bank keeps every training sample's
perturbation across epochs and the next attack on that sample starts from it.

* PGD / fast AT: the bank stores ``δ_i = x_adv,i − x_i`` (``N × C × H × W``); the next attack starts at
  ``clip_[0,1](x_i + δ_i)`` instead of a random point (then steps and projects onto the ε-ball around ``x_i``
  as usual).
* LoRa-PGD: the bank stores the factors ``U_i`` (``C × H × r``) and ``V_i`` (``C × r × W``), so it takes
  ``N·C·r·(H+W)`` numbers instead of ``N·C·H·W``: ``2r/n`` of a full bank for ``n × n`` images. The next attack
  starts from ``U_i/‖U_i‖_F``, ``V_i/‖V_i‖_F``: the applied perturbation ``ε·UV/‖UV‖`` is invariant to the
  scale of either factor, and unit norms restore the step sizes of a fresh start (each normalised LoRa-PGD
  step grows ``‖U‖²`` by one, which would otherwise shrink the steps epoch after epoch).

A sample not attacked yet starts as the attack would without a bank (random start, or the ``lora`` init).
The bank's tensors live on the training device and are part of ``resume.pt``. In a distributed run every
process stores the rows of all shards (:meth:`PerturbationBank.store_all`: tensor collectives on the device,
no pickling), so all hold the same bank as a single process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from robustlr.attacks import PGD, LoRaPGD
from robustlr.attacks.projections import clip_unit, normalize_per_sample

from .distributed import Distributed

__all__ = ["PerturbationBank", "WarmStartLoRaPGD", "WarmStartPGD"]


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))


class PerturbationBank:
    """Per-sample tensors of ``shapes`` (one tensor per entry: ``[(C, H, W)]`` for PGD, ``[(C, H, r), (C, r, W)]``
    for LoRa-PGD) for ``size`` samples, with a mask of the samples stored so far.

    The storage has one more row, index ``size``, that is never read: :meth:`store_all` sends the padding of the
    gathered rows there, so that it needs no host read to drop them. ``tensors`` and ``known`` are views of the
    first ``size`` rows.

    Args:
        size: the number of training samples.
        shapes: per-sample shape of each stored tensor.
        full_shape: per-sample shape of a full perturbation ``(C, H, W)`` (for :meth:`full_bytes`).
        device: where the tensors live.
    """

    def __init__(self, size: int, shapes: list[tuple[int, ...]], full_shape: tuple[int, ...],
                 device: torch.device) -> None:
        self._storage = [torch.zeros((size + 1, *shape), device=device) for shape in shapes]
        self._known = torch.zeros(size + 1, dtype=torch.bool, device=device)
        self.tensors = [storage[:size] for storage in self._storage]
        self.known = self._known[:size]
        self.full_shape = full_shape

    def lookup(self, ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(known, tensors)`` of the samples ``ids``: whether each was stored, and the stored rows."""
        ids = ids.to(self.known.device)
        return self.known[ids], [tensor[ids] for tensor in self.tensors]

    def store(self, ids: Tensor, rows: list[Tensor]) -> None:
        """Keep ``rows`` (one tensor per bank tensor, ``len(ids)`` rows each) for the samples ``ids``."""
        ids = ids.to(self.known.device)
        for tensor, row in zip(self.tensors, rows, strict=True):
            tensor[ids] = row.to(tensor.device, tensor.dtype)
        self.known[ids] = True

    def store_all(self, ids: Tensor, rows: list[Tensor], group: Distributed, capacity: int) -> None:
        """:meth:`store` the rows of every process: ``ids`` and ``rows`` are this process's (at most ``capacity``
        of them, the same ``capacity`` on every process), gathered with
        :meth:`~robustlr.train.distributed.Distributed.gather_rows`; the padding (id ``-1``) goes to the spare
        row. A sample appears in at most one shard, so the result equals storing the shards one after another.
        In a single process this is :meth:`store`.

        Raises:
            ValueError: if ``capacity`` is below the number of ``ids``.
        """
        if not group.enabled:
            self.store(ids, rows)
            return
        gathered_ids, gathered = group.gather_rows(ids, rows, capacity)
        spare = self.known.shape[0]
        target = torch.where(gathered_ids >= 0, gathered_ids, spare).to(self._known.device)
        for storage, row in zip(self._storage, gathered, strict=True):
            storage[target] = row.to(storage.device, storage.dtype)
        self._known[target] = True

    def nbytes(self) -> int:
        """Bytes of the stored perturbations (the mask excluded)."""
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors)

    def full_bytes(self) -> int:
        """Bytes a bank of full perturbations ``(N, C, H, W)`` would take."""
        first = self.tensors[0]
        return first.shape[0] * int(torch.Size(self.full_shape).numel()) * first.element_size()

    def state_dict(self) -> dict[str, Any]:
        # copies of the first `size` rows (a CPU view would save the spare row with its storage)
        return {"tensors": [tensor.to("cpu", copy=True) for tensor in self.tensors],
                "known": self.known.to("cpu", copy=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tensors, known = state["tensors"], state["known"]
        if [t.shape for t in tensors] != [t.shape for t in self.tensors] or known.shape != self.known.shape:
            raise ValueError(f"resume: the stored warm-start bank has shapes {[tuple(t.shape) for t in tensors]}, this "
                             f"run needs {[tuple(t.shape) for t in self.tensors]}")
        for tensor, stored in zip(self.tensors, tensors):
            tensor.copy_(stored)
        self.known.copy_(known)


class WarmStartPGD(PGD):
    """:class:`~robustlr.attacks.PGD` that starts the samples with ``known`` set at ``clip(x + δ)``, where
    ``stored = [δ]`` holds the bank's rows for the batch."""

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor], *args: Any, known: Tensor,
                 stored: list[Tensor], **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.known, (self.delta,) = known, stored

    def _start(self, x: Tensor, restart: int) -> Tensor:
        fresh = super()._start(x, restart)
        return torch.where(_rows(self.known, x), clip_unit(x + self.delta.to(x.dtype)), fresh)

    def warm_run(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(x_adv, [δ = x_adv − x])``: the attack and the rows to store."""
        x_adv = self(x, y)
        return x_adv, [x_adv - x]


class WarmStartLoRaPGD(LoRaPGD):
    """:class:`~robustlr.attacks.LoRaPGD` whose ``lora`` init is replaced, for the samples with ``known`` set,
    by the stored factors ``stored = [U, V]`` scaled to unit Frobenius norm per sample."""

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor], *args: Any, known: Tensor,
                 stored: list[Tensor], **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.known, (self.u, self.v) = known, stored

    def _lora_init(self, x: Tensor, r: int, restart: int) -> tuple[Tensor, Tensor]:
        u, v = super()._lora_init(x, r, restart)
        u0 = normalize_per_sample(self.u.to(x.dtype), "l2")
        v0 = normalize_per_sample(self.v.to(x.dtype), "l2")
        return torch.where(_rows(self.known, u), u0, u), torch.where(_rows(self.known, v), v0, v)

    def warm_run(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(x_adv, [U, V])``: one run of the attack (first restart) and its final factors, the rows to store."""
        u, v = self.factors(x, y)
        return self.images(x, u, v), [u, v]
