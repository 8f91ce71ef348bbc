"""Build the antialiased subsamplers of a residual block's main path and shortcut."""

from __future__ import annotations

from typing import Literal, cast

from torch import nn

from invariance_lightning.nn import AliasFreeDownsample, APS2d, APS2dFollower, BlurPool2d, LPS2d, PolyphaseLeader
from invariance_lightning.nn.blurpool import MAX_FILTER_SIZE, PaddingMode
from invariance_lightning.nn.lps import ScorerPadding
from invariance_lightning.validation import check_choice, check_int

Method = Literal["blur", "aps", "lps", "afc"]
#: Antialiased subsampling methods that replace only the subsampling layers (a pretrained network's weights still
#: compute what they computed, up to the subsampling).
METHODS: tuple[str, ...] = ("blur", "aps", "lps")
#: Every antialiasing method: :data:`METHODS` and "afc" (alias-free: ideal low-pass subsampling, and polynomial
#: activations in place of the ReLUs, which replaces more than the subsampling layers).
ANTIALIAS_METHODS: tuple[str, ...] = (*METHODS, "afc")
#: Every way a network may subsample: plain striding or one of :data:`ANTIALIAS_METHODS`.
DOWNSAMPLE_CHOICES: tuple[str, ...] = ("stride", *ANTIALIAS_METHODS)

#: The padding of a network's convs that the model builders accept (``padding_mode``).
NETWORK_PADDING_MODES: tuple[str, ...] = ("zeros", "circular")


def check_method(owner: str, method: object, filter_size: object) -> None:
    """Validate an antialiasing ``method`` (one of :data:`ANTIALIAS_METHODS`) and ``filter_size`` of ``owner``'s
    arguments (``filter_size`` is checked for every method, used by all but "afc")."""
    check_choice(owner, "method", method, ANTIALIAS_METHODS)
    check_int(owner, "filter_size", filter_size, 1, MAX_FILTER_SIZE)


def blur_padding(conv_padding_mode: str) -> PaddingMode:
    """Blur padding that matches a conv's: circular for circular convs (keeps exact equivariance), else reflect."""
    return "circular" if conv_padding_mode == "circular" else "reflect"


def _aps(channels: int, stride: int, filter_size: int, padding_mode: PaddingMode, sampler: nn.Module) -> nn.Module:
    """``sampler`` preceded by a stride-1 binomial low-pass when ``filter_size > 1``."""
    if filter_size == 1:
        return sampler
    return nn.Sequential(BlurPool2d(channels, filter_size, stride=1, padding_mode=padding_mode), sampler)


def make_downsample(
    method: Method, channels: int, stride: int, filter_size: int, padding_mode: PaddingMode
) -> nn.Module:
    """One subsampler: ``BlurPool2d`` ("blur"), or low-pass + ``APS2d`` ("aps") / ``LPS2d`` ("lps"; no low-pass for
    ``filter_size=1``; the LPS scorer pads circularly in a circularly padded network, else with zeros), or
    ``AliasFreeDownsample`` ("afc": an ideal low-pass, circular by construction; ``filter_size`` unused)."""
    check_method("make_downsample", method, filter_size)
    if method == "afc":
        return AliasFreeDownsample(stride)
    if method == "blur":
        return BlurPool2d(channels, filter_size, stride, padding_mode)
    if method == "lps":
        scorer_padding: ScorerPadding = "circular" if padding_mode == "circular" else "zeros"
        return _aps(channels, stride, filter_size, padding_mode, LPS2d(channels, stride, padding_mode=scorer_padding))
    return _aps(channels, stride, filter_size, padding_mode, APS2d(channels, stride))


def make_downsample_pair(
    method: Method,
    main_channels: int,
    shortcut_channels: int,
    stride: int,
    filter_size: int,
    padding_mode: PaddingMode,
) -> tuple[nn.Module, nn.Module]:
    """Subsamplers for a residual block's main path and shortcut.

    For "aps" and "lps" the shortcut's sampler is an :class:`APS2dFollower` of the main path's
    :class:`APS2d` / :class:`LPS2d`, so both paths keep the same polyphase component (the main path must run first).
    """
    main = make_downsample(method, main_channels, stride, filter_size, padding_mode)
    if method in ("blur", "afc"):  # stateless filters: the shortcut's own, with the same band
        return main, make_downsample(method, shortcut_channels, stride, filter_size, padding_mode)
    # the APS2d / LPS2d itself, or the last layer of _aps's (low-pass, sampler) Sequential
    leader = main if isinstance(main, PolyphaseLeader) else cast(PolyphaseLeader, cast(nn.Sequential, main)[-1])
    return main, _aps(shortcut_channels, stride, filter_size, padding_mode, APS2dFollower(leader))
