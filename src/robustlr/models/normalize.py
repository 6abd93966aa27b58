"""Per-channel input normalization as a module, so models take inputs in [0, 1]."""

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _as_floats(name: str, values: Sequence[float] | Tensor) -> list[float]:
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    problem = f"{name} must be a non-empty sequence of numbers, got {values!r}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(problem)
    try:
        floats = [float(value) for value in values]
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if not all(math.isfinite(value) for value in floats):
        raise ValueError(f"{name} must contain only finite numbers, got {values!r}")
    return floats


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dimension 1 of ``x``).

    ``mean`` and ``std`` are stored as buffers of shape ``(1, C, 1, 1)``, so they move
    with ``.to()`` and are saved in the state dict. A single value applies to every
    channel.

    Raises:
        ValueError: if ``mean`` or ``std`` is empty or not finite, a ``std`` entry is
            not positive, or their lengths differ.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        means, stds = _as_floats("mean", mean), _as_floats("std", std)
        if min(stds) <= 0:
            raise ValueError(f"std entries must all be > 0, got {stds!r}")
        if len(means) != len(stds):
            raise ValueError(
                f"mean and std must have the same length, got {len(means)} and {len(stds)}"
            )
        self.register_buffer("mean", torch.tensor(means).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stds).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape ``(batch, C, H, W)``.

        Raises:
            ValueError: if ``x`` is not 4-dimensional, or has a channel count other
                than this module's (a length-1 ``mean``/``std`` accepts any).
        """
        channels = self.mean.shape[1]
        if x.dim() != 4 or channels not in (1, x.shape[1]):
            raise ValueError(
                f"x must have shape (batch, {channels if channels > 1 else 'C'}, H, W), "
                f"got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(
    model: nn.Module, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), model)``, with children named
    ``normalize`` and ``model`` (so ``result[0]`` is the :class:`Normalize`)."""
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), model=model))
