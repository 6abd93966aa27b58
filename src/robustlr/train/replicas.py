"""Keeping the model replicas of a distributed run identical, and checking that they are.

DDP all-reduces the gradients, so every process holds the same averaged gradient and applies the same
deterministic optimiser step: for CondLR the same retraction ``U ← qf(U − lr·d_U)``, ``V ← qf(V − lr·d_V)`` and
projection ``S ← Π_τ(S − lr·d_S)``, hence the same ``U``, ``S``, ``V`` bit for bit. :func:`check_in_sync` verifies
it once per epoch by comparing a hash of every parameter across processes (:func:`parameter_hashes`, computed
on the device; one ``all_gather`` of one small integer tensor and one host read per epoch). Two things are not
covered by the gradient argument and are synchronised from rank 0 explicitly:

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
           "model_digest", "parameter_hashes", "tensor_hash"]


class ReplicaDivergenceError(RuntimeError):
    """The processes of a distributed run hold different parameters."""


_MASK32 = 0xFFFFFFFF
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B1, 0x5BD1E995, 0x27D4EB2F  # odd, so each multiplication is a bijection mod 2³²


def _words(tensor: torch.Tensor) -> torch.Tensor:
    """The bit pattern of ``tensor`` as non-negative integers of 32 bits or fewer (int64, on its device): the
    elements' bytes viewed as int32 when their count is a multiple of 4, else as int16 or uint8."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    for dtype, bits in ((torch.int32, 32), (torch.int16, 16)):
        if flat.numel() % (bits // 8) == 0:
            return flat.view(dtype).to(torch.int64) & ((1 << bits) - 1)
    return flat.to(torch.int64)


def tensor_hash(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-d int64 hash of ``tensor``'s bits, computed on its device without a host read.

    Word ``w_i`` (:func:`_words`) at position ``i`` becomes ``h_i = f(w_i + (i+1)·g mod 2³²)`` where ``f`` is the
    bijection of 32-bit words ``x ← x·m₁; x ← x ⊕ (x ≫ 15); x ← x·m₂; x ← x ⊕ (x ≫ 13)`` (mod 2³²; ``g``,
    ``m₁``, ``m₂`` odd constants); the hash is ``Σ_i h_i`` (exact in int64 below 2³¹ words, so independent of
    the reduction order). Since every ``h_i`` is a bijective function of ``w_i``, changing any single word
    always changes the hash; several changes cancel with probability about 2⁻³².
    """
    words = _words(tensor)
    x = (words + (torch.arange(1, words.numel() + 1, device=words.device) * _GOLDEN)) & _MASK32
    x = (x * _MIX1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX2) & _MASK32
    x = x ^ (x >> 13)
    return x.sum()


def parameter_hashes(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """``(names, hashes)``: :func:`tensor_hash` of every parameter, then the rank of every low-rank layer
    (``name.rank``), as one int64 tensor on the parameters' device."""
    params = dict(model.named_parameters())
    ranks = {f"{name}.rank": module.rank for name, module in model.named_modules()
             if isinstance(module, LowRankLayer)}
    device = next(iter(params.values())).device if params else torch.device("cpu")
    hashes = [tensor_hash(param) for param in params.values()]
    hashes.append(torch.tensor(list(ranks.values()), dtype=torch.int64, device=device))
    return [*params, *ranks], torch.cat([h.reshape(-1) for h in hashes])


def model_digest(hashes: list[int]) -> str:
    """One hex digest of the values of :func:`parameter_hashes`' tensor."""
    return hashlib.blake2b(",".join(map(str, hashes)).encode(), digest_size=16).hexdigest()


def check_in_sync(model: nn.Module, group: Distributed, when: str) -> str:
    """Raise unless every process's :func:`parameter_hashes` equal rank 0's; return their :func:`model_digest`.

    One ``all_gather`` of the ``(P,)`` hash tensor (``P`` parameters and ranks), the comparison with rank 0 on
    the device, and one host read of ``P + k·P`` integers (rank 0's hashes and the ``(k, P)`` mismatch table of
    ``k`` processes).

    Raises:
        ReplicaDivergenceError: naming the processes and the parameters that differ from rank 0's.
    """
    names, hashes = parameter_hashes(model)
    gathered = group.all_gather(hashes)
    p = len(names)
    table = torch.cat([gathered[0], gathered.ne(gathered[0]).flatten().to(torch.int64)]).tolist()
    reference, mismatch = table[:p], table[p:]
    differing = {rank: [name for column, name in enumerate(names) if mismatch[rank * p + column]]
                 for rank in range(gathered.shape[0])}
    differing = {rank: names for rank, names in differing.items() if names}
    if differing:
        listed = "; ".join(f"rank {rank}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                           for rank, names in differing.items())
        raise ReplicaDivergenceError(
            f"the model replicas diverged {when}: parameters differ from rank 0's on {listed}. Every process must "
            "apply the same step to the same all-reduced gradients; nondeterministic kernels or a process-local "
            "change of the model break that. The last checkpoint before this epoch is kept"
        )
    return model_digest(reference)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, group: Distributed) -> None:
    """Overwrite every buffer with rank 0's."""
    for buffer in model.buffers():
        group.broadcast_(buffer)


@torch.no_grad()
def broadcast_lowrank_state(model: nn.Module, optimizer: Optimizer, group: Distributed) -> None:
    """Give every process rank 0's ``U``, ``S``, ``V``, rank and optimiser state of each low-rank layer (the ranks
    of all layers in one broadcast and one host read)."""
    layers = [module for module in model.modules() if isinstance(module, LowRankLayer)]
    ranks = torch.tensor([layer.rank for layer in layers], dtype=torch.int64)
    group.broadcast_(ranks)
    for layer, rank in zip(layers, ranks.tolist(), strict=True):
        layer.set_extra_state({"rank": rank})
        for param in (layer.U, layer.S, layer.V):
            group.broadcast_(param)
            for value in optimizer.state[param].values():
                if isinstance(value, torch.Tensor):
                    group.broadcast_(value)
