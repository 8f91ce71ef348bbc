"""CIFAR ResNets of He et al. (2016): 3 stages of 16/32/64 channels, option-A shortcuts.

Layer names (``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear``) match the widely
used pretrained CIFAR-10 checkpoints, which :func:`load_cifar_resnet` reads.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from os import PathLike
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.models._downsample import (
    DOWNSAMPLE_CHOICES,
    METHODS,
    NETWORK_PADDING_MODES,
    blur_padding,
    check_method,
    make_downsample_pair,
)
from invariance_lightning.models.pretrained import cifar_resnet_weights
from invariance_lightning.models.weights import load_weights_only, with_untrained_layers
from invariance_lightning.nn import BlurPool2d
from invariance_lightning.nn.alias_free import PolynomialActivation
from invariance_lightning.nn.circular import ConvPaddingMode, make_conv2d
from invariance_lightning.transforms.normalization import IMAGENET_STATS
from invariance_lightning.validation import check_choice, check_int

Downsample = Literal["stride", "blur", "aps", "lps", "afc"]
CIFAR_RESNET_DEPTHS: tuple[int, ...] = (8, 20, 32, 44, 56, 110)


#: Normalization of the pretrained CIFAR-10 ResNet-20/56 checkpoints: they were trained on ImageNet statistics.
CIFAR_RESNET_NORMALIZE = IMAGENET_STATS


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with BN and a parameter-free option-A shortcut.

    The shortcut subsamples ``x`` and zero-pads the new channels equally before and after the
    existing ones. With ``downsample="stride"`` a stride-2 block uses a strided ``conv1`` and
    ``x[:, :, ::2, ::2]``; otherwise ``conv1`` runs at stride 1 and ``down`` subsamples after
    ``bn1`` + ReLU (Zhang's placement), while ``shortcut_down`` subsamples ``x`` with the same
    method (for "aps", the component the main path chose).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, padding_mode: ConvPaddingMode = "zeros") -> None:
        super().__init__()
        if stride == 1 and in_planes != planes:
            raise ValueError(f"a stride-1 block keeps its width, got in_planes={in_planes}, planes={planes}")
        self.stride = stride
        self.conv1 = make_conv2d(in_planes, planes, 3, stride, padding=1, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(planes)
        self.down: nn.Module = nn.Identity()
        self.conv2 = make_conv2d(planes, planes, 3, 1, padding=1, bias=False, padding_mode=padding_mode)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_down: nn.Module = nn.Identity() if stride == 1 else BlurPool2d(in_planes, 1, stride)
        self.act1: nn.Module = nn.ReLU()
        self.act2: nn.Module = nn.ReLU()
        extra = planes - in_planes
        self.channel_padding = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def set_downsample(self, method: Downsample, filter_size: int = 3) -> None:
        """Switch the block between "stride", "blur", "aps", "lps" (these change only a stride-2 block) and "afc"
        (also the activations of every block); keeps all weights."""
        check_choice("CifarBasicBlock.set_downsample", "downsample", method, DOWNSAMPLE_CHOICES)
        self.set_activations(alias_free=method == "afc")
        if self.stride == 1:
            return
        in_planes, planes = self.conv1.in_channels, self.conv1.out_channels
        if method == "stride":
            self.conv1.stride = (self.stride, self.stride)
            self.down, self.shortcut_down = nn.Identity(), BlurPool2d(in_planes, 1, self.stride)
            return
        self.conv1.stride = (1, 1)
        self.down, self.shortcut_down = make_downsample_pair(
            method, planes, in_planes, self.stride, filter_size, blur_padding(self.conv1.padding_mode)
        )

    def set_activations(self, alias_free: bool) -> None:
        """Two ReLUs, or alias-free: a :class:`PolynomialActivation` inside the block and none after the residual
        sum. A square there would square the residual stream once per block, which then grows without bound (in a random
        alias-free ResNet-20 built that way it reached 7e8 and the loss 7e4 in the first training step, then NaN)."""
        self.act1, self.act2 = (PolynomialActivation(), nn.Identity()) if alias_free else (nn.ReLU(), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.down(out)))
        # After the main path: an APS follower here reuses the component the main path chose.
        shortcut = self.shortcut_down(x)
        if self.channel_padding[-1]:
            shortcut = F.pad(shortcut, self.channel_padding)
        return self.act2(out + shortcut)


class CifarResNet(nn.Module):
    """conv3x3(16) -> BN -> ReLU -> 3 stages of ``n`` blocks (16, 32, 64 ch) -> global avg pool -> ``linear``."""

    layer1: nn.Sequential  # the three stages, added by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, padding_mode: ConvPaddingMode = "zeros") -> None:
        super().__init__()
        self.conv1 = make_conv2d(3, 16, 3, 1, padding=1, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(16)
        self.act: nn.Module = nn.ReLU()
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride, padding_mode))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    downsample: Downsample = "stride",
    filter_size: int = 3,
    padding_mode: Literal["zeros", "circular"] = "zeros",
) -> CifarResNet:
    """A CIFAR ResNet-``depth`` (``depth = 6n + 2``: 8, 20, 32, 44, 56, 110) for 32x32 inputs.

    Args:
        depth: 8 (one block per stage: small tests), 20, 32, 44, 56 or 110.
        num_classes: outputs of the final ``linear`` layer.
        downsample: "stride" (the original strided convs), "blur" (stride-1 conv, BN, ReLU, then
            ``BlurPool2d``; the shortcut is blurred and subsampled) or "aps" (stride-1 conv, BN, ReLU,
            stride-1 binomial low-pass of size ``filter_size``, then ``APS2d``; the shortcut keeps the
            same polyphase component) or "lps" (as "aps" with a learned ``LPS2d`` choosing the component).
            Or "afc" (alias-free, Michaeli et al. 2023: ideal low-pass subsampling on both paths and polynomial
            activations computed at twice the resolution, none after a block's residual sum, which keeps the network
            trainable; with ``padding_mode="circular"`` it is invariant to circular integer and half-pixel shifts).
            Same parameters and state_dict keys for "stride", "blur", "aps" and "afc"; "lps" adds its scorers'.
        filter_size: binomial filter length for "blur", "aps" and "lps" (1: no low-pass).
        padding_mode: conv padding, "zeros" or "circular" (circular + "aps"/"lps" makes the network exactly
            invariant to circular shifts of the input in eval mode; the low-pass and the LPS scorers then also
            pad circularly).
    """
    owner = "cifar_resnet"
    depth = check_int(owner, "depth", depth, 1)
    if depth not in CIFAR_RESNET_DEPTHS:
        raise ValueError(f"{owner}: depth must be one of {CIFAR_RESNET_DEPTHS}, got {depth}")
    check_int(owner, "num_classes", num_classes, 1)
    check_choice(owner, "downsample", downsample, DOWNSAMPLE_CHOICES)
    check_choice(owner, "padding_mode", padding_mode, NETWORK_PADDING_MODES)
    if downsample in METHODS:
        check_method(owner, downsample, filter_size)
    model = CifarResNet((depth - 2) // 6, num_classes, padding_mode)
    for module in model.modules():
        if isinstance(module, CifarBasicBlock):
            module.set_downsample(downsample, filter_size)
    if downsample == "afc":
        model.act = PolynomialActivation()
    return model


def _find_prefix(keys: list[str]) -> str:
    """The prefix (``""``, ``"module."``, ``"model."``, ...) under which a CIFAR ResNet's keys live."""
    prefixes = sorted(
        key[: -len("conv1.weight")]
        for key in keys
        if key.endswith("conv1.weight") and key[: -len("conv1.weight")] + "linear.weight" in keys
    )
    if len(prefixes) != 1:
        found = prefixes or [key for key in keys if key.endswith("conv1.weight")][:5]
        raise ValueError(
            "expected exactly one CIFAR ResNet (keys '<prefix>conv1.weight' and '<prefix>linear.weight') in the "
            f"checkpoint, found {found}"
        )
    return prefixes[0]


def _cifar_resnet_state(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """A plain :class:`CifarResNet` state dict from a loaded checkpoint: a plain state dict, ``{"state_dict": ...}``
    (the pretrained ``.th`` files, Lightning checkpoints), keys under one prefix such as ``module.`` (DataParallel)
    or ``model.``."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint['state_dict'] must be a dict, got {type(state).__name__}")
    prefix = _find_prefix([key for key in state if isinstance(key, str)])
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _recorded_architecture(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`cifar_resnet` arguments a Lightning checkpoint of ``ImageClassifier`` recorded in its
    hyperparameters (``downsample``, ``filter_size``, ``padding_mode``): parameter-free choices that its state dict
    cannot reveal, so that a BlurPool or APS network is not rebuilt as a strided one."""
    hyper_parameters = checkpoint.get("hyper_parameters")
    if not isinstance(hyper_parameters, Mapping):
        return {}
    return {
        name: hyper_parameters[name]
        for name in ("downsample", "filter_size", "padding_mode")
        if name in hyper_parameters
    }


def load_cifar_resnet(
    weights: str | PathLike[str], *, model: CifarResNet | None = None, download: bool = True, **kwargs: Any
) -> CifarResNet:
    """A CIFAR ResNet with the weights ``weights`` names: a file, or a released model (``"resnet20"``, found locally
    or downloaded by :func:`~invariance_lightning.models.pretrained.cifar_resnet_weights`).

    Without ``model``, a :func:`cifar_resnet` is built whose depth and class count are read from the weights (and,
    for an ``ImageClassifier`` Lightning checkpoint, its ``downsample``, ``filter_size`` and ``padding_mode``
    hyperparameters, which the state dict cannot show: a BlurPool checkpoint is rebuilt with BlurPool); with
    ``model``, the weights are loaded into it (in place; returned), e.g. into an antialiased network to fine-tune it
    (BlurPool and APS add no parameters, but change what the loaded weights compute). Always
    ``torch.load(..., weights_only=True, map_location="cpu")``: a file that would need arbitrary unpickling raises
    ``ValueError``. Accepted layouts: a plain state dict, ``{"state_dict": ...}`` (the released ``.th`` files,
    Lightning checkpoints), keys under one prefix such as ``module.`` or ``model.``. Missing ``num_batches_tracked``
    entries (old checkpoints) are filled in by BatchNorm; every other key must match (strict loading). The returned
    model is in training mode, like any freshly built module; call ``.eval()``.

    Args:
        weights: a weights file or a released model's name.
        model: a :class:`CifarResNet` to load into instead of building one.
        download: whether a released model missing locally may be downloaded.
        **kwargs: other :func:`cifar_resnet` arguments (``downsample``, ``filter_size``, ``padding_mode``) when
            building; ``depth``/``num_classes`` must agree with the weights if given.

    Raises:
        ValueError: the weights do not fit (depth or classes differ from ``model`` or ``kwargs``, or ``kwargs`` name
            an architecture other than the one a Lightning checkpoint recorded).
    """
    if model is not None and not isinstance(model, CifarResNet):
        raise TypeError(f"load_cifar_resnet: `model` must be a CifarResNet or None, got {type(model).__name__}")
    if model is not None and kwargs:
        raise TypeError(f"load_cifar_resnet: architecture arguments {sorted(kwargs)} cannot be combined with `model`")
    path = cifar_resnet_weights(weights, download=download)
    checkpoint = load_weights_only(path)
    state = _cifar_resnet_state(checkpoint)
    if model is None:
        stage1 = {int(m.group(1)) for key in state if (m := re.fullmatch(r"layer1\.(\d+)\.conv1\.weight", key))}
        inferred = {
            "depth": 6 * len(stage1) + 2,
            "num_classes": int(state["linear.weight"].shape[0]),
            **_recorded_architecture(checkpoint),
        }
        for name, value in inferred.items():
            if name in kwargs and kwargs[name] != value:
                raise ValueError(
                    f"{name}={kwargs[name]!r} was given but the weights in {str(path)!r} have {name}={value!r}"
                )
        model = cifar_resnet(**{**kwargs, **inferred})
    # an LPS network's scorers are new parameters that strided, BlurPool and APS weights cannot have: they keep
    # their initialization; every other key must match
    try:
        model.load_state_dict(with_untrained_layers(model, state))
    except RuntimeError as error:
        raise ValueError(
            f"the weights in {str(path)!r} do not fit this CifarResNet (depth or classes differ): {error}"
        ) from error
    return model


def load_cifar_resnet_weights(model: CifarResNet, path: str | PathLike[str]) -> CifarResNet:
    """Deprecated: ``load_cifar_resnet(path, model=model)``."""
    warnings.warn(
        "load_cifar_resnet_weights(model, path) is deprecated and will be removed; use "
        "load_cifar_resnet(path, model=model)",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_cifar_resnet(path, model=model)


def cifar_resnet_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Deprecated: the state dict of a loaded checkpoint; load models with :func:`load_cifar_resnet`."""
    warnings.warn(
        "cifar_resnet_state_dict is deprecated and will be removed; load weights with load_cifar_resnet",
        DeprecationWarning,
        stacklevel=2,
    )
    return _cifar_resnet_state(checkpoint)
