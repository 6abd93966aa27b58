"""Keeping the model replicas of a distributed run identical, and checking that they are.

DDP all-reduces the gradients, so every process holds the same averaged gradient and applies the same
deterministic optimiser step: for CondLR the same retraction ``U ← qf(U − lr·d_U)``, ``V ← qf(V − lr·d_V)`` and
projection ``S ← Π_τ(S − lr·d_S)``, hence the same ``U``, ``S``, ``V`` bit for bit. :func:`check_in_sync` verifies
it once per epoch by comparing a digest of every parameter across processes. Two things are not covered by the
gradient argument and are synchronised from rank 0 explicitly:

* buffers (BatchNorm running statistics): DDP broadcasts them from rank 0 at every forward pass, but each
  process's own forward pass then updates them; :func:`broadcast_buffers` restores rank 0's at epoch end;
* rank-adaptive CondLR (``theta``): the new rank is a decision (a truncation of singular values), so rank 0
  makes it and :func:`broadcast_lowrank_state` sends its factors, ranks and optimiser state to the others.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.optim import Optimizer

from robustlr.lowrank.layers import LowRankLayer

from .distributed import Distributed

__all__ = ["ReplicaDivergenceError", "broadcast_buffers", "broadcast_lowrank_state", "check_in_sync",
           "model_digest", "parameter_digests"]


class ReplicaDivergenceError(RuntimeError):
    """The processes of a distributed run hold different parameters."""


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()
    return hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def parameter_digests(model: nn.Module) -> dict[str, str]:
    """``{name: hex digest of its bytes}`` of every parameter, plus ``name.rank`` of every low-rank layer."""
    digests = {name: _digest(param) for name, param in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLayer):
            digests[f"{name}.rank"] = str(module.rank)
    return digests


def model_digest(digests: dict[str, str]) -> str:
    """One hex digest of a :func:`parameter_digests` mapping."""
    text = "\n".join(f"{name}={value}" for name, value in sorted(digests.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def check_in_sync(gathered: list[dict[str, str]], when: str) -> None:
    """Raise unless every process's :func:`parameter_digests` (``gathered[rank]``) equals rank 0's.

    Raises:
        ReplicaDivergenceError: naming the processes and the parameters that differ from rank 0's.
    """
    reference = gathered[0]
    differing = {
        rank: sorted(name for name in reference.keys() | digests.keys() if reference.get(name) != digests.get(name))
        for rank, digests in enumerate(gathered)
    }
    differing = {rank: names for rank, names in differing.items() if names}
    if differing:
        listed = "; ".join(f"rank {rank}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                           for rank, names in differing.items())
        raise ReplicaDivergenceError(
            f"the model replicas diverged {when}: parameters differ from rank 0's on {listed}. Every process must "
            "apply the same step to the same all-reduced gradients; nondeterministic kernels or a process-local "
            "change of the model break that. The last checkpoint before this epoch is kept"
        )


@torch.no_grad()
def broadcast_buffers(model: nn.Module, group: Distributed) -> None:
    """Overwrite every buffer with rank 0's."""
    for buffer in model.buffers():
        group.broadcast_(buffer)


@torch.no_grad()
def broadcast_lowrank_state(model: nn.Module, optimizer: Optimizer, group: Distributed) -> None:
    """Give every process rank 0's ``U``, ``S``, ``V``, rank and optimiser state of each low-rank layer."""
    for module in model.modules():
        if not isinstance(module, LowRankLayer):
            continue
        rank = torch.tensor([module.rank])
        group.broadcast_(rank)
        module.set_extra_state({"rank": int(rank)})
        for param in (module.U, module.S, module.V):
            group.broadcast_(param)
            for value in optimizer.state[param].values():
                if isinstance(value, torch.Tensor):
                    group.broadcast_(value)
