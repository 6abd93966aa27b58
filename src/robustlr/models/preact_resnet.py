"""Pre-activation residual networks (He et al., 2016): PreAct ResNet-18 and the
common trunk that wide residual networks (:mod:`robustlr.models.wrn`) also use."""

from collections.abc import Sequence

from torch import Tensor, nn

from .activation import make_activation
from .checks import check_int, check_model_args


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``out = conv2(act(bn2(conv1(a)))) + shortcut``
    with ``a = act(bn1(x))``.

    The shortcut is ``x`` itself when the shape is kept, otherwise a 1x1 strided
    convolution of ``a`` (``self.shortcut``; ``None`` for the identity).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, activation: str
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = make_activation(activation)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = make_activation(activation)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual branch plus shortcut."""
        pre = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return self.conv2(self.act2(self.bn2(self.conv1(pre)))) + shortcut


class PreActResNet(nn.Module):
    """conv3x3(in -> stem_width), groups of :class:`PreActBlock` (the first group keeps
    the resolution, each later one halves it), then BN - act - global average pool - fc.
    """

    def __init__(
        self,
        stem_width: int,
        widths: Sequence[int],
        blocks_per_group: int,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size, activation)
        check_int("stem_width", stem_width, 1)
        check_int("blocks_per_group", blocks_per_group, 1)
        if not widths:
            raise ValueError(f"widths must name at least one group width, got {widths!r}")
        blocks: list[nn.Module] = []
        channels = stem_width
        for group, width in enumerate(widths):
            check_int(f"widths[{group}]", width, 1)
            for index in range(blocks_per_group):
                stride = 2 if group > 0 and index == 0 else 1
                blocks.append(PreActBlock(channels, width, stride, activation))
                channels = width
        self.stem = _conv3x3(in_channels, stem_width)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            make_activation(activation),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)`` for ``x`` of shape ``(batch, C, H, W)``."""
        return self.head(self.blocks(self.stem(x)))


def preact_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "leaky_relu",
) -> PreActResNet:
    """PreAct ResNet-18 for CIFAR: 64-wide stem, 2 blocks each of width 64/128/256/512.

    Unlike some CIFAR ports it ends with the BN-activation that a pre-activation
    network needs before pooling (He et al., 2016).
    """
    widths = (64, 128, 256, 512)
    return PreActResNet(64, widths, 2, num_classes, in_channels, image_size, activation)
