"""Activation functions selectable by name in every model of the zoo."""

from collections.abc import Callable

from torch import nn

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of the default activation (PyTorch's default, as in the CondLR paper)."""

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "relu": nn.ReLU,
}

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
"""Names accepted by the ``activation`` argument; the first is the default."""


def check_activation(activation: str) -> str:
    """Return ``activation`` unchanged if it names a known activation.

    Raises:
        ValueError: naming ``activation``, the value given and the allowed names.
    """
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}"
        )
    return activation


def make_activation(activation: str) -> nn.Module:
    """Build a fresh activation module (``"leaky_relu"`` with slope 0.01, or ``"relu"``)."""
    return _ACTIVATIONS[check_activation(activation)]()
