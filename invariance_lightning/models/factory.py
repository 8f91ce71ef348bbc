"""Build a classification backbone by name, optionally antialiased: our CIFAR ResNets, torchvision or timm models."""

from __future__ import annotations

import re
from typing import Literal, cast

from torch import nn

from invariance_lightning.models._downsample import DOWNSAMPLE_CHOICES, NETWORK_PADDING_MODES, Method
from invariance_lightning.models.antialias import antialias
from invariance_lightning.models.cifar_resnet import CIFAR_RESNET_DEPTHS, Downsample, cifar_resnet
from invariance_lightning.validation import check_choice

_CIFAR_NAME = re.compile(r"cifar_resnet(\d+)")


def build_backbone(
    name: str,
    num_classes: int,
    *,
    downsample: str = "stride",
    filter_size: int = 3,
    padding_mode: str = "zeros",
) -> nn.Module:
    """A freshly initialized classifier returning ``(N, num_classes)`` logits.

    Names: ``cifar_resnet{20,32,44,56,110}`` (ours, with ``padding_mode``), ``torchvision:<model>``
    (any ``torchvision.models`` classifier, e.g. ``torchvision:resnet18``) or ``timm:<model>``
    (e.g. ``timm:resnet18``). ``downsample`` "blur", "aps", "lps" or "afc" antialiases the strided layers
    (BlurPool, adaptive or learnable polyphase sampling, alias-free layers; see
    :func:`invariance_lightning.models.antialias`); ``padding_mode="circular"`` then also makes a torchvision/timm
    network's convs circular (for "aps", "lps" and "afc": exact invariance to circular shifts).
    """
    check_choice("build_backbone", "downsample", downsample, DOWNSAMPLE_CHOICES)
    match = _CIFAR_NAME.fullmatch(name)
    if match:
        depth = int(match.group(1))
        if depth not in CIFAR_RESNET_DEPTHS:
            raise ValueError(f"unknown backbone {name!r}: CIFAR ResNet depths are {list(CIFAR_RESNET_DEPTHS)}")
        return cifar_resnet(  # downsample checked above, padding_mode by cifar_resnet
            depth,
            num_classes=num_classes,
            downsample=cast(Downsample, downsample),
            filter_size=filter_size,
            padding_mode=cast(Literal["zeros", "circular"], padding_mode),
        )
    library, _, model_name = name.partition(":")
    if library == "torchvision" and model_name:
        import torchvision

        model = torchvision.models.get_model(model_name, weights=None, num_classes=num_classes)
    elif library == "timm" and model_name:
        import timm

        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    else:
        raise ValueError(
            f"unknown backbone {name!r}; use cifar_resnet<depth> (depths {list(CIFAR_RESNET_DEPTHS)}), "
            "torchvision:<model> or timm:<model>"
        )
    check_choice("build_backbone", "padding_mode", padding_mode, NETWORK_PADDING_MODES)
    if downsample == "stride":
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={padding_mode!r} for a {library} backbone needs an antialiasing `downsample` "
                "(antialias() switches its convs); a strided one is only supported for cifar_resnet backbones"
            )
        return model
    return antialias(
        model,
        method=cast(Method, downsample),
        filter_size=filter_size,
        inplace=True,
        circular_padding=padding_mode == "circular",
    )
