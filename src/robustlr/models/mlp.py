"""Fully connected classifier on flattened images."""

from collections.abc import Sequence

from torch import Tensor, nn

from .activation import make_activation
from .checks import check_int, check_model_args


class MLP(nn.Module):
    """flatten - (fc - act) for each hidden size - fc -> num_classes.

    With ``hidden_sizes=()`` it is multinomial logistic regression.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "leaky_relu",
        hidden_sizes: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size, activation)
        if isinstance(hidden_sizes, (str, bytes)) or not isinstance(hidden_sizes, Sequence):
            raise ValueError(
                f"hidden_sizes must be a sequence of integers >= 1, got {hidden_sizes!r}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_channels * image_size * image_size
        for index, size in enumerate(hidden_sizes):
            check_int(f"hidden_sizes[{index}]", size, 1)
            layers += [nn.Linear(features, size), make_activation(activation)]
            features = size
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)`` for ``x`` of shape ``(batch, C, H, W)``."""
        return self.layers(x)
