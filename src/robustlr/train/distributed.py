"""The process group of a distributed run (``torchrun`` or ``robustlr train --nproc N``) and its collectives.

A run is distributed when the environment says ``WORLD_SIZE > 1`` (``torchrun`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The group uses ``nccl`` when training on CUDA (each process on
``cuda:LOCAL_RANK``) and ``gloo`` on the CPU. A single process gets the same object with ``world_size = 1``,
whose collectives return their input, so the trainer has one code path.

Sharding: process ``r`` of ``k`` takes the contiguous block ``[⌊r·n/k⌋, ⌊(r+1)·n/k⌋)`` of ``n`` items (sizes
differ by at most one). Blocks in rank order concatenate to the whole, which is what makes a distributed
batch, validation or evaluation equal to the single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Distributed", "block", "is_main_process"]


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
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
        if device.type == "cuda" and local_rank >= torch.cuda.device_count():
            raise ValueError(f"device must give every process a GPU: LOCAL_RANK {local_rank} needs cuda:{local_rank}, "
                             f"but this machine has {torch.cuda.device_count()} GPUs; use at most that many processes")
        owns = not dist.is_initialized()
        if owns:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend)
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

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum of ``values`` over the processes (a copy, on ``values``' device)."""
        if not self.enabled:
            return values.clone()
        total = values.detach().to(self._comm_device).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(values.device)

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_(self, tensor: Tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's values."""
        if not self.enabled:
            return
        if tensor.device == self._comm_device:
            dist.broadcast(tensor, src=0)
            return
        staged = tensor.detach().to(self._comm_device)
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
