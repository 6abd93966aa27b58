"""Bottleneck residual networks (He et al., 2016), ResNet-50 in torchvision's layout (no torchvision import).

The module names and shapes are torchvision's ``resnet50`` (``conv1 bn1 relu maxpool layer1..layer4 avgpool
fc``; a block is ``conv1 bn1 conv2 bn2 conv3 bn3 relu downsample``), so its ``state_dict`` keys are the same and
the parameter count for 1000 classes and 3 channels is torchvision's 25 557 032. As in torchvision ("ResNet
v1.5"), a block that downsamples puts its stride on the 3×3 convolution.

A :class:`Bottleneck` computes ``act(bn3(conv3(a₂)) + shortcut(x))`` with ``a₁ = act(bn1(conv1₁ₓ₁(x)))``,
``a₂ = act(bn2(conv2₃ₓ₃,stride(a₁)))``; ``conv3`` widens ``width → 4·width``, and the shortcut is ``x`` or, when
the shape changes, ``bn(conv₁ₓ₁,stride(x))``.

Stems: ``"imagenet"`` is conv7×7/2 – BN – act – maxpool3×3/2 (the network divides the side by 32); ``"small"`` is
the usual CIFAR port's conv3×3/1 – BN – act without pooling (the side is divided by 8), for 32×32 inputs.
``"auto"`` takes ``"small"`` below 64 pixels and ``"imagenet"`` from 64 on.

The activation is the zoo's default (LeakyReLU, slope 0.01); ``activation="relu"`` is torchvision's network.
"""

from collections.abc import Sequence

from torch import Tensor, nn

from .activation import make_activation
from .checks import check_model_args

STEMS = ("auto", "imagenet", "small")
"""Values of the ``stem`` argument (see the module docstring)."""

SMALL_BELOW = 64
"""``stem="auto"`` uses the small stem for images of a side below this."""

_MIN_SIDE = {"imagenet": 32, "small": 8}  # the total downsampling: layer4 is at least 1×1


class Bottleneck(nn.Module):
    """``act(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x)))))))) + shortcut(x))``, ``4·width`` channels out."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, activation: str) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = make_activation(activation)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Residual branch plus shortcut, then the activation."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem, four groups of :class:`Bottleneck` of widths 64/128/256/512 (every group after the first halves
    the side), global average pool, ``fc``. Convolutions are initialised ``kaiming_normal_(fan_out)``, BN to
    ``γ = 1, β = 0`` (torchvision's defaults)."""

    def __init__(
        self,
        blocks_per_group: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        activation: str = "leaky_relu",
        stem: str = "auto",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {list(STEMS)}; got {stem!r}")
        kind = ("small" if image_size < SMALL_BELOW else "imagenet") if stem == "auto" else stem
        check_model_args(num_classes, in_channels, image_size, activation, _MIN_SIDE[kind],
                         f"the {kind} stem and the four groups divide the side by {_MIN_SIDE[kind]}")
        if kind == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = make_activation(activation)
        channels = 64
        for group, (width, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_group, strict=True)):
            layer = []
            for index in range(blocks):
                stride = 2 if group > 0 and index == 0 else 1
                layer.append(Bottleneck(channels, width, stride, activation))
                channels = width * Bottleneck.expansion
            setattr(self, f"layer{group + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)`` for ``x`` of shape ``(batch, C, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    activation: str = "leaky_relu",
    stem: str = "auto",
) -> ResNet:
    """ResNet-50: bottleneck blocks ``[3, 4, 6, 3]`` (torchvision's layout; see the module docstring)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, image_size, activation, stem)
