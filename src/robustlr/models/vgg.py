"""VGG16 with batch normalization, sized for CIFAR-style inputs."""

from torch import Tensor, nn

from .activation import make_activation
from .checks import check_model_args

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
"""Conv widths in order; ``"M"`` is a 2x2 max-pool."""

_MIN_IMAGE_SIZE = 32  # 5 max-pools of stride 2 must leave at least a 1x1 map


class VGG16(nn.Module):
    """13 conv3x3(pad 1, no bias)-BatchNorm-act layers with 5 max-pools, an adaptive
    average pool to 1x1, then fc 512->512 - act - fc 512->512 - act - Dropout(0.2)
    - fc 512->num_classes.

    BatchNorm uses PyTorch's default momentum (0.1). For 32x32 inputs the adaptive
    pool is the identity; larger inputs are averaged down to 1x1.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        check_model_args(
            num_classes, in_channels, image_size, activation,
            _MIN_IMAGE_SIZE, "vgg16 halves the image 5 times",
        )
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in VGG16_CONFIG:
            if entry == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, entry, 3, padding=1, bias=False),
                    nn.BatchNorm2d(entry),
                    make_activation(activation),
                ]
                channels = entry
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512),
            make_activation(activation),
            nn.Linear(512, 512),
            make_activation(activation),
            nn.Dropout(0.2),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)`` for ``x`` of shape ``(batch, C, H, W)``."""
        return self.classifier(self.pool(self.features(x)))
