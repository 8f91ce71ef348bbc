"""The memory format a layer's output should keep."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D channels-last tensor (that is not also plainly contiguous), else
    ``torch.contiguous_format``: what a new tensor made from ``x`` should use so that the next conv stays on its
    channels-last kernels instead of converting."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not x.is_contiguous() else torch.contiguous_format
