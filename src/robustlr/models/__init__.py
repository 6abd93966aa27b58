"""Model zoo (LeNet5, VGG16, WRN, PreAct ResNet-18, ResNet-50, MLP), input normalization,
checkpoints with JSON sidecars, and loading users' own models from a file."""

from .activation import ACTIVATIONS, LEAKY_RELU_SLOPE, make_activation
from .checkpoint import load_checkpoint, model_from_sidecar, save_checkpoint, sidecar_path
from .lenet import LeNet5
from .mlp import MLP
from .normalize import Normalize, with_normalization
from .preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from .resnet import Bottleneck, ResNet, resnet50
from .registry import available_models, create, creation_args
from .user_model import load_model_file
from .vgg import VGG16
from .wrn import wide_resnet

__all__ = [
    "ACTIVATIONS",
    "Bottleneck",
    "LEAKY_RELU_SLOPE",
    "MLP",
    "VGG16",
    "LeNet5",
    "Normalize",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "available_models",
    "create",
    "creation_args",
    "load_checkpoint",
    "load_model_file",
    "make_activation",
    "model_from_sidecar",
    "preact_resnet18",
    "resnet50",
    "save_checkpoint",
    "sidecar_path",
    "wide_resnet",
    "with_normalization",
]
