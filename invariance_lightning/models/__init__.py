"""Backbones (CIFAR ResNets, a factory by name) and a converter that antialiases ResNets' strided layers."""

from invariance_lightning.models.antialias import DownsampledInputConv2d, antialias
from invariance_lightning.models.cifar_resnet import (
    CIFAR_RESNET_DEPTHS,
    CIFAR_RESNET_NORMALIZE,
    CifarBasicBlock,
    CifarResNet,
    cifar_resnet,
    cifar_resnet_state_dict,
    load_cifar_resnet,
    load_cifar_resnet_weights,
)
from invariance_lightning.models.factory import build_backbone
from invariance_lightning.models.pretrained import PRETRAINED_CIFAR_RESNETS, cifar_resnet_weights
from invariance_lightning.models.shift_averaging import STRIDE2_SHIFTS, ShiftAveraging
from invariance_lightning.models.weights import load_backbone_weights

__all__ = [
    "CIFAR_RESNET_DEPTHS",
    "CIFAR_RESNET_NORMALIZE",
    "PRETRAINED_CIFAR_RESNETS",
    "STRIDE2_SHIFTS",
    "CifarBasicBlock",
    "CifarResNet",
    "DownsampledInputConv2d",
    "ShiftAveraging",
    "antialias",
    "build_backbone",
    "cifar_resnet",
    "cifar_resnet_state_dict",
    "cifar_resnet_weights",
    "load_backbone_weights",
    "load_cifar_resnet",
    "load_cifar_resnet_weights",
]
