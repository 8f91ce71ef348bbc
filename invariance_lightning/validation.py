"""Argument and input validation shared by the downsampling layers."""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor

T = TypeVar("T")


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_choice(name: str, value: T, choices: tuple[str, ...]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise naming ``name`` and the value."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_feature_map(layer: str, x: object, channels: int | None) -> None:
    """Require a 4-D ``(N, C, H, W)`` floating tensor with ``channels`` channels (when not None)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point input, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer} was built for channels={channels}, got an input with {x.shape[1]} channels "
            f"(shape {tuple(x.shape)})"
        )
