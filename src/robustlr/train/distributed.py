"""The process group of a distributed run (``torchrun`` or ``robustlr train --nproc N``) and its collectives.

A run is distributed when the environment says ``WORLD_SIZE > 1`` (``torchrun`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The group uses ``nccl`` when training on CUDA (each process on
``cuda:LOCAL_RANK``) and ``gloo`` on the CPU. A single process gets the same object with ``world_size = 1``,
whose collectives return their input, so the trainer has one code path.

Sharding: process ``r`` of ``k`` takes the contiguous block ``[⌊r·n/k⌋, ⌊(r+1)·n/k⌋)`` of ``n`` items (sizes
differ by at most one). Blocks in rank order concatenate to the whole, which is what makes a distributed
batch, validation or evaluation equal to the single-process one.

GPUs: whenever the device is CUDA and ``WORLD_SIZE > 1``, :meth:`Distributed.from_env` calls
``torch.cuda.set_device(LOCAL_RANK)`` before any CUDA work, also when the caller created the process group
(otherwise every rank's NCCL collectives would run on ``cuda:0``). The collectives move tensors, never pickles,
on the hot path: :meth:`Distributed.gather_rows` (the warm-start bank) is ``all_gather`` of fixed-shape
tensors on the communication device. Inputs that one process validates by itself are checked under
:meth:`Distributed.raise_on_all`, so that a ``ValueError`` on one rank is raised on every rank instead of
leaving the others waiting in the next collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Distributed", "block", "is_main_process"]

_T = TypeVar("_T")


def block(n: int, rank: int, world_size: int) -> range:
    """Indices ``[⌊rank·n/world_size⌋, ⌊(rank+1)·n/world_size⌋)`` of ``range(n)``: process ``rank``'s shard."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def is_main_process() -> bool:
    """Whether this process is rank 0 (always, outside a distributed run)."""
    return int(os.environ.get("RANK", "0")) == 0


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    if text is None or not text.isdigit():
        raise ValueError(f"environment variable {name} must be an integer >= 0 in a distributed run (WORLD_SIZE > 1, "
                         f"as set by torchrun); got {text!r}")
    return int(text)


@dataclass
class Distributed:
    """Rank, world size and local rank of this process, with the collectives the trainer needs.

    ``owns_group`` is true when :meth:`from_env` created the process group (then :meth:`close` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """This process's place in the run, joining (or creating) the default process group when
        ``WORLD_SIZE > 1``; ``device`` (the configured one) picks the backend.

        Raises:
            ValueError: for a malformed torchrun environment, or a CUDA run with fewer GPUs than local ranks.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1") or "1")
        if world_size <= 1:
            return cls()
        _env_int("RANK")  # validated: the group gives the rank
        local_rank = _env_int("LOCAL_RANK")
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"device must give every process a GPU: LOCAL_RANK {local_rank} needs "
                                 f"cuda:{local_rank}, but this machine has {torch.cuda.device_count()} GPUs; use at "
                                 "most that many processes")
            torch.cuda.set_device(local_rank)  # before any CUDA work, whoever creates the group
        owns = not dist.is_initialized()
        if owns:
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
            else:
                dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns)

    @property
    def enabled(self) -> bool:
        """Whether several processes take part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes files."""
        return self.rank == 0

    def device(self, configured: torch.device) -> torch.device:
        """The device of this process: ``cuda:LOCAL_RANK`` for a distributed CUDA run, else ``configured``."""
        if self.enabled and configured.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return configured

    @property
    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` (gradients averaged over processes in the backward pass), or
        ``model`` itself in a single process."""
        if not self.enabled:
            return model
        on_cuda = next(model.parameters()).device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_cuda else None)

    def shard(self, n: int) -> range:
        """This process's block of ``range(n)`` (see the module docstring)."""
        return block(n, self.rank, self.world_size)

    def max_shard(self, n: int) -> int:
        """The most items any process's block of ``range(n)`` holds: ``⌈n / world_size⌉`` (the ``capacity`` of
        :meth:`gather_rows` for rows of one global batch of ``n``)."""
        return -(-n // self.world_size)

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum of ``values`` over the processes (a copy, on ``values``' device)."""
        if not self.enabled:
            return values.clone()
        total = self._stage(values).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(values.device)

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def _stage(self, tensor: Tensor) -> Tensor:
        """``tensor`` on the communication device (``cuda:LOCAL_RANK`` for NCCL, the CPU for gloo)."""
        return tensor.detach().to(self._comm_device)

    def all_gather(self, tensor: Tensor) -> Tensor:
        """``stack([tensor of rank 0, tensor of rank 1, ...])`` on every process (same shape and dtype on all;
        on ``tensor``'s device); ``tensor[None]`` in a single process."""
        if not self.enabled:
            return tensor[None]
        staged = self._stage(tensor).contiguous()
        parts = [torch.empty_like(staged) for _ in range(self.world_size)]
        dist.all_gather(parts, staged)
        return torch.stack(parts).to(tensor.device)

    def gather_rows(self, ids: Tensor, rows: list[Tensor], capacity: int) -> tuple[Tensor, list[Tensor]]:
        """Every process's ``(ids, rows)`` concatenated in rank order, padded: ``(ids_all, rows_all)`` with
        ``world_size · capacity`` entries, where padding entries have id ``-1`` (and zero rows).

        ``ids`` (``n ≤ capacity`` integers, any device) label the ``n`` leading rows of each tensor of ``rows``
        (on the training device). Each process pads to ``capacity`` rows and the padded tensors are gathered
        with one ``all_gather`` per tensor on the communication device (no pickling, no host copy of the rows);
        ``capacity`` must be the same on every process (e.g. the largest shard, ``⌈B / k⌉``).

        Raises:
            ValueError: if ``capacity`` is below ``n`` or a row tensor does not have ``n`` rows.
        """
        n = ids.shape[0]
        if capacity < n or any(row.shape[0] != n for row in rows):
            raise ValueError(f"capacity must be >= the {n} ids and every row tensor must have {n} rows; got "
                             f"capacity {capacity} and rows {[tuple(row.shape) for row in rows]}")
        device = rows[0].device if rows else ids.device
        padded_ids = torch.full((capacity,), -1, dtype=torch.long, device=device)
        padded_ids[:n] = ids.to(device)
        gathered_ids = self.all_gather(padded_ids).flatten()
        gathered = []
        for row in rows:
            padded = row.new_zeros((capacity, *row.shape[1:]))
            padded[:n] = row.detach()
            gathered.append(self.all_gather(padded).flatten(0, 1))
        return gathered_ids, gathered

    @contextmanager
    def raise_on_all(self) -> Iterator[None]:
        """Run the block on every process; if it raises a ``ValueError`` on any, raise one on all.

        Every process all-reduces an error flag (0 or 1) after the block: ``Σ flags > 0`` means some rank
        failed. The messages are then gathered (on this error path only) and every process raises
        ``ValueError("<message> (raised on rank r)")`` with the message of the lowest failing rank ``r`` (so that
        an error still begins with the name of the bad input), and no process is left waiting in a collective.
        The block must not itself run collectives (a failing rank would skip them). Costs one all-reduce of one number and one host read per use; nothing in a single process.
        """
        if not self.enabled:
            yield
            return
        error: ValueError | None = None
        try:
            yield
        except ValueError as raised:
            error = raised
        if self.sum(torch.tensor([float(error is not None)], dtype=torch.float64)).item() == 0:
            return
        messages = self.gather(None if error is None else str(error))
        first = next(rank for rank, message in enumerate(messages) if message is not None)
        raise ValueError(f"{messages[first]} (raised on rank {first})") from error

    def agreed(self, fn: Callable[..., _T]) -> Callable[..., _T]:
        """``fn`` called under :meth:`raise_on_all` (``fn`` itself in a single process)."""
        if not self.enabled:
            return fn

        def call(*args: Any, **kwargs: Any) -> _T:
            with self.raise_on_all():
                result = fn(*args, **kwargs)
            return result

        return call

    def broadcast_(self, tensor: Tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's values."""
        if not self.enabled:
            return
        if tensor.device == self._comm_device:
            dist.broadcast(tensor, src=0)
            return
        staged = self._stage(tensor)
        dist.broadcast(staged, src=0)
        tensor.copy_(staged)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :meth:`from_env` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
