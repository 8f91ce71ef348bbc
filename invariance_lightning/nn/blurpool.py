"""BlurPool: binomial low-pass filtering followed by subsampling (Zhang, ICML 2019)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.nn.circular import circular_conv2d
from invariance_lightning.transforms.functional import pad_2d
from invariance_lightning.validation import check_choice, check_images, check_int

PaddingMode = Literal["reflect", "replicate", "zeros", "circular"]
PADDING_MODES: tuple[str, ...] = ("reflect", "replicate", "zeros", "circular")
MAX_FILTER_SIZE = 7


def binomial_filter2d(filter_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(k, k)`` outer product of the binomial coefficients ``C(k-1, i)``, normalized to sum to 1."""
    check_int("binomial_filter2d", "filter_size", filter_size, 1, MAX_FILTER_SIZE)
    row = torch.tensor([math.comb(filter_size - 1, i) for i in range(filter_size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).to(dtype)


class BlurPool2d(nn.Module):
    """Depthwise binomial blur followed by subsampling with ``stride``.

    The filter is the normalized outer product of the binomial coefficients of length
    ``filter_size`` (1: no blur, the layer is plain subsampling ``x[..., ::stride, ::stride]``;
    2: box; 3: ``[1, 2, 1]``; ... up to 7). It is a non-persistent buffer: not a parameter and
    not in the ``state_dict``, so adding the layer to a model does not change its checkpoint keys.

    Padding: ``(filter_size - 1) // 2`` before and ``filter_size // 2`` after along each axis
    (one more after for even sizes), so the output has ``ceil(H / stride) x ceil(W / stride)``
    pixels: the size of the strided conv (odd kernel ``k``, padding ``(k - 1) // 2``) or strided
    max-pool it replaces. Output pixel ``i`` is the blur centered on input pixel ``stride * i``
    (on ``stride * i + 0.5`` for even sizes). ``padding_mode``: "reflect" (the default, as in
    Zhang's code), "replicate", "zeros" or "circular"; a map too small to reflect-pad is
    replicate-padded instead, and circular padding wraps as often as needed.

    Kornia's ``BlurPool2D`` only zero-pads (darkening borders, breaking circular equivariance) and
    timm's pads symmetrically (an extra output pixel for even sizes) and crashes on maps smaller
    than the reflect padding, hence this implementation.

    Args:
        channels: number of input channels (the depthwise filter bank has one filter per channel).
        filter_size: binomial filter length, 1 to 7.
        stride: subsampling factor (1 blurs without subsampling).
        padding_mode: how the border is extended before blurring.
    """

    filter: Tensor

    def __init__(
        self, channels: int, filter_size: int = 3, stride: int = 2, padding_mode: PaddingMode = "reflect"
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_int(owner, "channels", channels, 1)
        self.filter_size = check_int(owner, "filter_size", filter_size, 1, MAX_FILTER_SIZE)
        self.stride = check_int(owner, "stride", stride, 1)
        self.padding_mode = check_choice(owner, "padding_mode", padding_mode, PADDING_MODES)
        before = (filter_size - 1) // 2
        after = filter_size - 1 - before
        self.padding = (before, after, before, after)
        kernel = binomial_filter2d(filter_size)
        self.register_buffer("filter", kernel.expand(channels, 1, filter_size, filter_size).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        check_images("BlurPool2d", "input", x, channels=self.channels)
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        kernel = self.filter.to(dtype=x.dtype)
        before, after = self.padding[:2]
        if self.padding_mode == "circular" and before == after:
            return circular_conv2d(x, kernel, stride=self.stride, padding=before, groups=self.channels)
        x = pad_2d(x, *self.padding, self.padding_mode)
        return F.conv2d(x, kernel, stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}, padding_mode={self.padding_mode!r}"
        )
