"""LeNet5 as used in the CondLR paper (20 and 50 conv filters, a 500-unit hidden layer)."""

from torch import Tensor, nn

from .activation import make_activation
from .checks import check_model_args

_KERNEL = 5
_MIN_IMAGE_SIZE = 16  # smallest side that leaves a 1x1 map after conv5-pool2-conv5-pool2


def lenet_feature_size(image_size: int) -> int:
    """Side of the feature map LeNet5 flattens for a square ``image_size`` input."""
    after_first = (image_size - _KERNEL + 1) // 2
    return (after_first - _KERNEL + 1) // 2


class LeNet5(nn.Module):
    """conv(in->20, 5x5) - act - maxpool 2 - conv(20->50, 5x5) - act - maxpool 2
    - flatten - fc(50*s*s -> 500) - act - fc(500 -> num_classes).

    ``s`` is :func:`lenet_feature_size` of ``image_size`` (4 for 28x28 inputs).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        check_model_args(
            num_classes, in_channels, image_size, activation,
            _MIN_IMAGE_SIZE, "lenet5 needs at least a 1x1 map after two conv5-pool2 stages",
        )
        side = lenet_feature_size(image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, _KERNEL),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, _KERNEL),
            make_activation(activation),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            make_activation(activation),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)`` for ``x`` of shape ``(batch, C, H, W)``."""
        return self.classifier(self.features(x))
