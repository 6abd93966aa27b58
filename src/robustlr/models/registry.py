"""Build models of the zoo by name, recording the arguments used."""

import copy
import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from .lenet import LeNet5
from .mlp import MLP
from .normalize import Normalize, with_normalization
from .preact_resnet import preact_resnet18
from .resnet import resnet50
from .vgg import VGG16
from .wrn import parse_wrn_name, wide_resnet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "mlp": MLP,
    "preact-resnet18": preact_resnet18,
    "resnet50": resnet50,
    "vgg16": VGG16,
    "wrn-16-4": partial(wide_resnet, 16, 4),
}

_CREATE_ARGS = "robustlr_create_args"  # attribute create() sets on the models it returns


def available_models() -> list[str]:
    """Names :func:`create` accepts (any ``wrn-D-K`` with ``D = 6n + 4`` works too)."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[..., nn.Module]:
    if isinstance(name, str):
        if name in _BUILDERS:
            return _BUILDERS[name]
        wrn = parse_wrn_name(name)
        if wrn is not None:
            return partial(wide_resnet, *wrn)
    raise ValueError(
        f"name must be one of {available_models()} or 'wrn-D-K' "
        f"(depth D = 6n + 4, widen factor K), got {name!r}"
    )


def create(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    activation: str = "leaky_relu",
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    **options: Any,
) -> nn.Module:
    """Build the model ``name`` (see :func:`available_models`), freshly initialized.

    Args:
        name: model name, e.g. ``"lenet5"``, ``"vgg16"``, ``"wrn-16-4"``,
            ``"preact-resnet18"``, ``"resnet50"``, ``"mlp"``.
        num_classes: number of output logits (>= 2).
        in_channels: input channels; ``None`` takes the model's default (1 for
            ``lenet5`` and ``mlp``, 3 for the CIFAR models).
        image_size: side of the square input; ``None`` takes the model's default
            (28 for ``lenet5`` and ``mlp``, 32 for the CIFAR models, 224 for ``resnet50``).
        activation: ``"leaky_relu"`` (slope 0.01) or ``"relu"``.
        mean, std: if given (both or neither), the model is wrapped by
            :func:`with_normalization` so it takes inputs in [0, 1].
        **options: model-specific arguments, e.g. ``hidden_sizes`` for ``"mlp"``.

    The returned module remembers these arguments (with defaults filled in) for
    :func:`creation_args`, which checkpoints use to rebuild it.

    Raises:
        ValueError: for an unknown name, option or activation, ``num_classes < 2``,
            ``in_channels < 1``, an image too small for the model, or bad ``mean``/``std``.
    """
    builder = _builder(name)
    signature = inspect.signature(builder)
    parameters = signature.parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        allowed = sorted(set(parameters) - set(inspect.signature(create).parameters))
        raise ValueError(f"options {unknown} are not accepted by {name!r}; it accepts {allowed}")
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std must be given together, got mean={mean!r} and std={std!r}")
    given = {"in_channels": in_channels, "image_size": image_size}
    arguments = signature.bind(
        num_classes=num_classes,
        activation=activation,
        **{key: value for key, value in given.items() if value is not None},
        **options,
    )
    arguments.apply_defaults()
    model = builder(**arguments.arguments)
    record: dict[str, Any] = {"name": name, **arguments.arguments}
    if mean is not None:
        model = with_normalization(model, mean, std)
        normalize: Normalize = model[0]
        record.update(mean=normalize.mean.flatten().tolist(), std=normalize.std.flatten().tolist())
    setattr(model, _CREATE_ARGS, record)
    return model


def creation_args(model: nn.Module) -> dict[str, Any] | None:
    """The keyword arguments of the :func:`create` call that built ``model``, such that
    ``create(**creation_args(model))`` builds the same architecture; ``None`` for
    models not built by :func:`create`."""
    return copy.deepcopy(getattr(model, _CREATE_ARGS, None))
