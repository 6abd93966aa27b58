"""Argument validation shared by the model constructors."""

from ..checks import check_int
from .activation import check_activation


def check_model_args(
    num_classes: int,
    in_channels: int,
    image_size: int,
    activation: str,
    min_image_size: int = 1,
    image_size_reason: str = "",
) -> None:
    """Validate the arguments every model of the zoo takes.

    Raises:
        ValueError: for ``num_classes < 2``, ``in_channels < 1``,
            ``image_size < min_image_size`` or an unknown ``activation``.
    """
    check_int("num_classes", num_classes, 2)
    check_int("in_channels", in_channels, 1)
    check_int("image_size", image_size, min_image_size, image_size_reason)
    check_activation(activation)
