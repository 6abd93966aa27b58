"""Wide residual networks WRN-depth-k (Zagoruyko & Komodakis, 2016)."""

import re

from .checks import check_int
from .preact_resnet import PreActResNet

WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")
"""Registry names ``wrn-D-K``: depth ``D = 6n + 4``, widen factor ``K``."""


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """``(depth, widen_factor)`` for a name like ``"wrn-16-4"``, else ``None``."""
    match = WRN_NAME.fullmatch(name)
    return None if match is None else (int(match[1]), int(match[2]))


def wide_resnet(
    depth: int,
    widen_factor: int,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "leaky_relu",
) -> PreActResNet:
    """WRN-depth-widen_factor: a 16-wide stem, then three groups of
    ``(depth - 4) / 6`` pre-activation blocks of width 16k, 32k and 64k, BN - act -
    global average pool - fc. Residual sums are part of every block's output.

    Raises:
        ValueError: if ``depth`` is not ``6n + 4`` with ``n >= 1`` or
            ``widen_factor < 1`` (and for the arguments every model checks).
    """
    check_int("depth", depth, 10)
    if (depth - 4) % 6:
        raise ValueError(
            f"depth must be 6n + 4 for an integer n >= 1 (10, 16, 22, 28, ...), got {depth!r}"
        )
    check_int("widen_factor", widen_factor, 1)
    widths = tuple(base * widen_factor for base in (16, 32, 64))
    blocks = (depth - 4) // 6
    return PreActResNet(16, widths, blocks, num_classes, in_channels, image_size, activation)
