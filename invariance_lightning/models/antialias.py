"""Convert a ResNet's strided layers to antialiased ones (BlurPool, APS, LPS or alias-free), keeping its weights.

Placement (Zhang 2019 for BlurPool, Chaman & Dokmanic 2021 for APS):

* strided max-pool -> max-pool at stride 1, then subsample (Zhang's MaxBlurPool);
* strided conv -> conv at stride 1, then its BN and ReLU at full resolution, then subsample: the
  subsampler is put in front of the *next* conv of the block (``conv2`` of a BasicBlock, ``conv3``
  of a Bottleneck), i.e. right after the ReLU. A converted stem conv's subsampler goes in front
  of the max-pool, after the stem's ReLU (by default only for "aps", see ``stem_conv``);
* strided 1x1 shortcut conv -> subsample, then the 1x1 conv at stride 1 (equal to conv-then-
  subsample for a pointwise conv, on 4x fewer pixels). For "aps" the shortcut keeps the component
  the block's main path chose (:class:`~invariance_lightning.nn.APS2dFollower`).

Subsampling after the ReLU (Zhang's placement) keeps everything the original layer computed,
densely: only the subsampling step changes, so with ``filter_size=1`` the converted network
reproduces the original exactly (tested), and a low-pass placed before the ReLU would instead
change what the pretrained ReLU and BN see. The price is the strided conv at full resolution.
All parameters keep their names and shapes (the low-pass filters are non-persistent buffers), so
the converted model loads the plain model's ``state_dict`` with ``strict=True`` and vice versa.

"afc" (alias-free, Michaeli et al. 2023) changes more than the subsampling: every strided layer becomes stride 1
followed, at the same places, by :class:`~invariance_lightning.nn.AliasFreeDownsample`; every ``nn.ReLU`` becomes a
:class:`~invariance_lightning.nn.PolynomialActivation` (the stem's, the first, also drops the input's Nyquist
frequency, which no fractional shift moves exactly), except the one after each block's residual sum, which is
dropped (a square there would square the residual stream once per block); and the stem's max-pool, a nonlinearity no
band-limited shift commutes with, is dropped: its subsampling joins the stem conv's in one ideal low-pass
subsampling by both strides. With ``circular_padding`` the result is invariant to circular integer and half-pixel
shifts of inputs whose sides are multiples of the total stride (32 for ImageNet ResNets). The weights still load,
but the network computes something else until it is fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from invariance_lightning._compat import as_pair
from invariance_lightning.models._downsample import (
    Method,
    blur_padding,
    check_method,
    make_downsample,
    make_downsample_pair,
)
from invariance_lightning.models.cifar_resnet import CifarBasicBlock
from invariance_lightning.nn.alias_free import AliasFreeDownsample, PolynomialActivation
from invariance_lightning.nn.circular import CircularConv2d, conv2d_forward

_STRIDED_TYPES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_CONV_PAIRS = (("conv1", "conv2"), ("conv2", "conv3"))


def _known_classes() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """(ResNet model classes with a ``conv1``/``bn1``/``maxpool`` stem, their residual block classes)."""
    models: list[type[nn.Module]] = [tv_resnet.ResNet]
    blocks: list[type[nn.Module]] = [tv_resnet.BasicBlock, tv_resnet.Bottleneck]
    try:  # timm is optional
        from timm.models import resnet as timm_resnet
    except ImportError:
        pass
    else:
        models.append(timm_resnet.ResNet)
        blocks += [timm_resnet.BasicBlock, timm_resnet.Bottleneck]
    return tuple(models), tuple(blocks)


class DownsampledInputConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose input first goes through ``down``; shares the wrapped conv's parameters.

    Being a ``Conv2d`` with the same ``weight``/``bias`` (``down`` has no state_dict entries), it
    keeps the wrapped conv's checkpoint keys.
    """

    def __init__(self, conv: nn.Conv2d, down: nn.Module) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            as_pair(conv.kernel_size),  # (h, w) pairs already: as_pair only types them as pairs
            stride=as_pair(conv.stride),
            padding=conv.padding,  # type: ignore[arg-type]  # a str or an (h, w) pair, typed tuple[int, ...]
            dilation=as_pair(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.down = down

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.down(x))

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv2d_forward(self, input, weight, bias)


def _stride(module: nn.Module) -> int:
    """The stride of a layer with equal strides along both axes (0 for unequal strides)."""
    stride_h, stride_w = as_pair(module.stride)
    return stride_h if stride_h == stride_w else 0


def _is_strided(module: nn.Module) -> bool:
    return isinstance(module, _STRIDED_TYPES) and any(s > 1 for s in as_pair(module.stride))


@dataclass(frozen=True)
class _Rewrite:
    """Replaces the strided layers ``converts`` by calling ``apply`` on the submodule at ``path``."""

    path: str
    converts: tuple[str, ...]
    apply: Callable[[Any, Method, int], None]  # Any: a torchvision/timm/CifarBasicBlock module, read by name


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _block_rewrite(path: str, block: nn.Module) -> _Rewrite | None:
    """A torchvision/timm BasicBlock/Bottleneck: strided conv, the conv after it, a strided 1x1-conv shortcut."""
    pair = next((p for p in _CONV_PAIRS if _is_strided(getattr(block, p[0], nn.Identity()))), None)
    shortcut = getattr(block, "downsample", None)
    if pair is None or not isinstance(shortcut, nn.Sequential) or len(shortcut) == 0:
        return None
    strided, following, shortcut_conv = getattr(block, pair[0]), getattr(block, pair[1], None), shortcut[0]
    stride = _stride(strided)
    if not (
        isinstance(strided, nn.Conv2d)
        and isinstance(following, nn.Conv2d)
        and not _is_strided(following)
        and isinstance(shortcut_conv, nn.Conv2d)
        and as_pair(shortcut_conv.kernel_size) == (1, 1)
        and as_pair(shortcut_conv.padding) == (0, 0)
        and stride > 1
        and _stride(shortcut_conv) == stride
    ):
        return None

    def apply(block: Any, method: Method, filter_size: int) -> None:
        strided, following, shortcut_conv = getattr(block, pair[0]), getattr(block, pair[1]), block.downsample[0]
        strided.stride = shortcut_conv.stride = (1, 1)
        main, short = make_downsample_pair(
            method,
            following.in_channels,
            shortcut_conv.in_channels,
            stride,
            filter_size,
            blur_padding(strided.padding_mode),
        )
        setattr(block, pair[1], DownsampledInputConv2d(following, main))
        block.downsample[0] = DownsampledInputConv2d(shortcut_conv, short)

    return _Rewrite(path, (_join(path, pair[0]), _join(path, "downsample.0")), apply)


def _stem_rewrite(path: str, model: nn.Module, stem_conv: bool) -> _Rewrite | None:
    """A ResNet stem ``conv1 -> bn1 -> relu -> maxpool``: strided max-pool, and the conv if strided and ``stem_conv``.

    A strided stem conv left strided on purpose counts as handled.
    """
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    strided_conv = isinstance(conv, nn.Conv2d) and _stride(conv) > 1
    strided_pool = isinstance(pool, nn.MaxPool2d) and _stride(pool) > 1
    convert_conv = strided_conv and stem_conv
    if not (strided_pool or strided_conv) or (convert_conv and not strided_pool):
        return None  # nothing to do, or no max-pool to put the conv's subsampler in front of
    converts = (_join(path, "conv1"),) * strided_conv + (_join(path, "maxpool"),) * strided_pool

    def apply(model: Any, method: Method, filter_size: int) -> None:
        if not strided_pool:  # only a stem conv deliberately left strided
            return
        conv, pool, channels = model.conv1, model.maxpool, model.bn1.num_features
        if method == "afc":  # the max-pool dropped (not alias-free), one ideal subsampling by both strides
            stride = _stride(pool) * (_stride(conv) if convert_conv else 1)
            conv.stride = (1, 1)
            model.maxpool = AliasFreeDownsample(stride)
            return
        padding = blur_padding(conv.padding_mode if isinstance(conv, nn.Conv2d) else "zeros")
        circular = padding == "circular"
        layers: list[nn.Module] = []
        if convert_conv:
            layers.append(make_downsample(method, channels, _stride(conv), filter_size, padding))
            conv.stride = (1, 1)
        if circular:  # max-pool pads with -inf; pad circularly ourselves to stay circular-shift equivariant
            pad_h, pad_w = as_pair(pool.padding)
            layers.append(nn.CircularPad2d((pad_w, pad_w, pad_h, pad_h)))
            layers.append(nn.MaxPool2d(pool.kernel_size, 1, 0, pool.dilation))
        else:
            layers.append(nn.MaxPool2d(pool.kernel_size, 1, pool.padding, pool.dilation))
        layers.append(make_downsample(method, channels, _stride(pool), filter_size, padding))
        model.maxpool = nn.Sequential(*layers)

    return _Rewrite(path, converts, apply)


def _make_convs_circular(model: nn.Module) -> None:
    """Turn every padded conv into a :class:`CircularConv2d` sharing its parameters (state-dict keys unchanged)."""
    padded = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.padding not in ((0, 0), "valid")
    ]
    for name, conv in padded:
        if isinstance(conv.padding, str):  # "same": no explicit amounts for the fast path; nn.Conv2d pads itself
            conv.padding_mode = "circular"
        elif not isinstance(conv, CircularConv2d):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, CircularConv2d.from_conv(conv))


def _other_activations(model: nn.Module) -> list[str]:
    """Activation modules other than ``nn.ReLU``: an alias-free conversion has no polynomial for them."""
    return [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if type(module).__module__ == nn.ReLU.__module__ and not isinstance(module, nn.ReLU)
    ]


class _AliasFreeTorchvisionBasicBlock(tv_resnet.BasicBlock):
    """torchvision's ``BasicBlock`` without the activation after the residual sum (its forward calls one ``relu``
    module inside the block and after the sum, so only a new forward can drop the second call)."""

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + shortcut


class _AliasFreeTorchvisionBottleneck(tv_resnet.Bottleneck):
    """torchvision's ``Bottleneck`` without the activation after the residual sum."""

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + shortcut


_ALIAS_FREE_TORCHVISION_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    tv_resnet.BasicBlock: _AliasFreeTorchvisionBasicBlock,
    tv_resnet.Bottleneck: _AliasFreeTorchvisionBottleneck,
}


def _drop_activation_after_residual_sum(block: nn.Module) -> None:
    """Leave a residual block's stream linear: a polynomial there would square it once per block, and it grows without
    bound (see :meth:`CifarBasicBlock.set_activations`). A timm block's last activation (``act2`` of a BasicBlock,
    ``act3`` of a Bottleneck) becomes an identity; a torchvision block becomes the subclass without it (same modules
    and state dict; subclasses of torchvision's blocks keep theirs)."""
    if isinstance(block, CifarBasicBlock):
        block.set_activations(alias_free=True)
    elif type(block) in _ALIAS_FREE_TORCHVISION_BLOCKS:
        block.__class__ = _ALIAS_FREE_TORCHVISION_BLOCKS[type(block)]
    elif hasattr(block, "act2"):  # timm's
        setattr(block, "act3" if hasattr(block, "act3") else "act2", nn.Identity())


def _make_activations_alias_free(model: nn.Module) -> None:
    """Drop each residual block's activation after its sum, then replace every other ``nn.ReLU`` by a
    :class:`PolynomialActivation` (stateless: no state-dict keys change)."""
    _, block_classes = _known_classes()
    for block in model.modules():
        if isinstance(block, (CifarBasicBlock, *block_classes)):
            _drop_activation_after_residual_sum(block)
    relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    for name in relus:
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, PolynomialActivation())


def _plan(model: nn.Module, stem_conv: bool) -> list[_Rewrite]:
    model_classes, block_classes = _known_classes()
    plan: list[_Rewrite] = []
    for path, module in model.named_modules():
        rewrite = None
        if isinstance(module, CifarBasicBlock) and _is_strided(module.conv1):
            rewrite = _Rewrite(path, (_join(path, "conv1"),), CifarBasicBlock.set_downsample)
        elif isinstance(module, block_classes):
            rewrite = _block_rewrite(path, module)
        elif isinstance(module, model_classes):
            rewrite = _stem_rewrite(path, module, stem_conv)
        if rewrite is not None:
            plan.append(rewrite)
    return plan


def antialias(
    model: nn.Module,
    method: Method = "blur",
    filter_size: int = 3,
    inplace: bool = False,
    circular_padding: bool = False,
    stem_conv: bool | None = None,
) -> nn.Module:
    """Replace the strided convs and max-pools of a ResNet by stride-1 layers plus antialiased subsampling.

    Supports ``torchvision.models.resnet*``, timm ``ResNet`` (``timm.create_model("resnet18")``
    and other ResNets with the default stem and 1x1-conv shortcuts) and :func:`cifar_resnet`
    (for which ``antialias(cifar_resnet(...), m, k)`` equals ``cifar_resnet(..., downsample=m,
    filter_size=k)`` with the same weights). Raises ``ValueError`` listing any strided layer it
    cannot place (e.g. deep stems, average-pool shortcuts, other architectures) before changing
    anything. See the module docstring for where the subsamplers go.

    Args:
        model: the model to convert (its weights are kept and still load with ``strict=True``).
        method: "blur" (:class:`BlurPool2d`), "aps" (stride-1 binomial low-pass of
            ``filter_size``, then :class:`APS2d`; the shortcut follows the main path's choice), "lps" (as
            "aps" with a learned :class:`LPS2d`, whose scorers are new, untrained parameters) or "afc" (alias-free
            layers, see the module docstring: ideal low-pass subsampling, polynomial activations, no max-pool).
        filter_size: binomial filter length, 1-7 (1: no low-pass; "blur" then equals the original
            subsampling, evaluated at the converted positions); unused by "afc".
        inplace: modify ``model`` itself instead of a deep copy.
        circular_padding: also switch every padded conv (and the stem max-pool) to circular
            padding, so that an "aps" or "lps" model is exactly invariant (in eval mode) to circular shifts of inputs
            whose size is a multiple of its total stride, and an "afc" one also to half-pixel shifts. Changes a
            pretrained model's outputs.
        stem_conv: also convert a strided stem conv (``conv1`` of torchvision/timm ResNets), which
            then runs at full input resolution: ~1.4x the training time of ResNet-18 for "blur"
            (see docs/models.md). Default: False for "blur" (Zhang's ``pool_only`` default: the
            stem conv stays strided, its max-pool is antialiased), True for "aps", "lps" and "afc" (exact
            invariance needs every subsampling to be adaptive or alias-free; "afc" refuses False).

    Returns:
        The converted model (``model`` itself when ``inplace``).
    """
    check_method("antialias", method, filter_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"antialias: model must be an nn.Module, got {type(model).__name__}")
    if stem_conv is None:
        stem_conv = method != "blur"
    if method == "afc" and not stem_conv:
        raise ValueError("antialias: method='afc' needs stem_conv=True (a strided stem conv aliases), got False")
    activations = _other_activations(model) if method == "afc" else []
    if activations:
        raise ValueError(
            f"antialias: method='afc' replaces nn.ReLU by polynomial activations and has none for the other "
            f"activations of {type(model).__name__}: {', '.join(activations)}"
        )
    plan = _plan(model, stem_conv)
    covered = {name for rewrite in plan for name in rewrite.converts}
    missed = [
        f"{name} ({type(module).__name__}, stride={module.stride})"
        for name, module in model.named_modules()
        if _is_strided(module) and name not in covered
    ]
    if missed:
        raise ValueError(
            f"antialias() cannot convert these strided layers of {type(model).__name__}: {', '.join(missed)}. "
            "It supports torchvision/timm ResNets (conv1/bn1/maxpool stem, BasicBlock/Bottleneck with a "
            "strided 1x1-conv shortcut) and cifar_resnet."
        )
    if not inplace:
        model = copy.deepcopy(model)
    if circular_padding:
        _make_convs_circular(model)
    for rewrite in plan:
        rewrite.apply(model.get_submodule(rewrite.path), method, filter_size)
    if method == "afc":
        _make_activations_alias_free(model)
    return model
