"""The package's argument validators, shared by every layer (torch-only and Lightning alike).

One behaviour everywhere: a value of the wrong type raises ``TypeError``, a value of the right type but outside
what is allowed raises ``ValueError``, and every message starts with the owner (the class or function checking
its argument) and names the argument, what was expected and what was given. ``positive_int`` and
``nonnegative_int`` are ``argparse`` types for the command-line entry points.
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Protocol, TypeVar

import torch
from torch import Tensor

__all__ = [
    "NonFiniteLogitsError",
    "check_choice",
    "check_feature_map",
    "check_finite_logits",
    "check_fits",
    "check_images",
    "check_int",
    "check_number",
    "check_optional_int",
    "check_scores",
    "check_size",
    "check_targets",
    "check_unit_range",
    "nonnegative_int",
    "positive_int",
]

T = TypeVar("T")


class NonFiniteLogitsError(ValueError):
    """A model's logits hold NaN or infinite values: its state, not an argument, is wrong (a diverged run)."""


def _checked_int(owner: str, name: str, value: object, low: int, high: int | None, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def _int_range(low: int, high: int | None) -> str:
    return f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"


def check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]`` (``high=None``: no upper bound).

    >>> check_int("BlurPool2d", "stride", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: BlurPool2d: stride must be an int >= 1, got 0
    """
    return _checked_int(owner, name, value, low, high, _int_range(low, high))


def check_optional_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> int | None:
    """:func:`check_int` that also accepts ``None``."""
    if value is None:
        return None
    return _checked_int(owner, name, value, low, high, "None or " + _int_range(low, high))


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real number (int or float, not bool) in ``[low, high]``
    (either bound may be None); ``strict`` excludes ``low`` itself."""
    bounds = [f"{'>' if strict else '>='} {low:g}"] if low is not None else []
    bounds += [f"<= {high:g}"] if high is not None else []
    expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    below = low is not None and (value < low or (strict and value == low))
    if not math.isfinite(value) or below or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return float(value)


def check_size(owner: str, name: str, value: object) -> tuple[int, int]:
    """Return ``value`` as ``(height, width)``: one positive int stands for both.

    >>> check_size("BatchAugmentation", "image_size", 32)
    (32, 32)
    """
    expected = "a positive int or a (height, width) pair of positive ints"
    size = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(size, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return size[0], size[1]


def check_choice(owner: str, name: str, value: T, choices: tuple[str, ...]) -> T:
    """Return ``value`` if it is one of the strings ``choices``; ``TypeError`` for a non-string, else
    ``ValueError``, both naming the choices."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value


def _got(value: object) -> str:
    """How a message names a wrong ``value``: a tensor by its shape and dtype, anything else by its type."""
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def check_images(
    owner: str,
    name: str,
    value: object,
    *,
    uint8: bool = False,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Return ``value`` if it is a batch of images: an ``(N, C, H, W)`` floating-point tensor (also uint8 with
    ``uint8``), with ``channels`` channels and ``(H, W) == size`` where those are given.

    >>> check_images("APS2d", "input", torch.zeros(2, 8))
    Traceback (most recent call last):
    ...
    ValueError: APS2d: input must be a floating-point (N, C, H, W) tensor, got shape (2, 8) and dtype torch.float32
    """
    kinds = "a uint8 or floating-point" if uint8 else "a floating-point"
    expected = f"{kinds} (N, C, H, W) tensor"
    if not isinstance(value, Tensor) or not (value.is_floating_point() or (uint8 and value.dtype == torch.uint8)):
        raise TypeError(f"{owner}: {name} must be {expected}, got {_got(value)}")
    if value.ndim != 4:
        raise ValueError(f"{owner}: {name} must be {expected}, got {_got(value)}")
    if channels is not None and value.shape[1] != channels:
        raise ValueError(f"{owner}: {name} must have C={channels} channels (N, C, H, W), got {_got(value)}")
    if size is not None and tuple(value.shape[-2:]) != tuple(size):
        raise ValueError(f"{owner}: {name} must be of size (H, W) = {tuple(size)}, got {_got(value)}")
    return value


def check_feature_map(owner: str, x: object, channels: int | None) -> None:
    """Deprecated: :func:`check_images` ``(owner, "input", x, channels=channels)``."""
    warnings.warn(
        "check_feature_map is deprecated: use check_images(owner, 'input', x, channels=channels)",
        DeprecationWarning,
        stacklevel=2,
    )
    check_images(owner, "input", x, channels=channels)


def check_unit_range(owner: str, name: str, images: Tensor) -> Tensor:
    """Return ``images`` if they are un-normalized: uint8, or floats in [0, 1] (what a zero fill makes black).

    >>> check_unit_range("evaluate_protocol", "images", torch.tensor([-0.5, 1.0]))
    Traceback (most recent call last):
    ...
    ValueError: evaluate_protocol: images must be uint8 or floats in [0, 1] (un-normalized), got values in [-0.5, 1]
    """
    if images.is_floating_point() and images.numel():
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(
                f"{owner}: {name} must be uint8 or floats in [0, 1] (un-normalized), got values in "
                f"[{low:.4g}, {high:.4g}]"
            )
    return images


def check_targets(owner: str, name: str, value: object, num_images: int) -> Tensor | None:
    """Return ``value`` if it is None or a ``(num_images,)`` tensor (the values are the caller's to check)."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: {name} must be None or a tensor of shape (N,) = ({num_images},), got {_got(value)}")
    if value.shape != (num_images,):
        raise ValueError(f"{owner}: {name} must be None or of shape (N,) = ({num_images},), got {_got(value)}")
    return value


def check_scores(owner: str, name: str, value: object, num_inputs: int) -> Tensor:
    """Return a model's outputs ``value`` if they are floating-point ``(N, C)``, ``(N,)`` or ``(N, 1)`` scores for
    ``num_inputs`` inputs (how they become ``(N, C)`` logits is :func:`~invariance_lightning.metrics.outputs.
    class_logits`'s)."""
    expected = f"a floating-point (N, C), (N,) or (N, 1) tensor for N={num_inputs} inputs"
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(f"{owner}: {name} must be {expected}, got {_got(value)}")
    if value.ndim not in (1, 2) or value.shape[0] != num_inputs:
        raise ValueError(f"{owner}: {name} must be {expected}, got {_got(value)}")
    return value


class FrameSizes(Protocol):
    """What :func:`check_fits` needs of a transform sequence."""

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Frame size for ``height`` x ``width`` inputs; ValueError if the frames do not fit them."""
        ...


def check_fits(owner: str, name: str, sequence: FrameSizes, height: int, width: int) -> None:
    """Raise ValueError unless ``sequence`` (e.g. a ``TransformSequence``) fits ``height`` x ``width`` images."""
    try:
        sequence.output_size(height, width)
    except ValueError as error:
        raise ValueError(f"{owner}: {name} must fit the {height}x{width} images, got {error}") from None


def check_finite_logits(owner: str, name: str, value: Tensor) -> Tensor:
    """Return the logits ``value`` if every entry is finite; :class:`NonFiniteLogitsError` otherwise.

    >>> check_finite_logits("f", "logits", torch.tensor([1.0, float("nan")]))
    Traceback (most recent call last):
    ...
    invariance_lightning.validation.NonFiniteLogitsError: f: logits must be finite, got 1 NaN or infinite values
    """
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        raise NonFiniteLogitsError(f"{owner}: {name} must be finite, got {int((~finite).sum())} NaN or infinite values")
    return value


def _argparse_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: an int >= 1.

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an int >= 1, got '0'
    """
    return _argparse_int(text, 1)


def nonnegative_int(text: str) -> int:
    """``argparse`` type: an int >= 0 (``"1.5"`` and ``"-1"`` are refused as :func:`positive_int` refuses ``"0"``).

    >>> nonnegative_int("0")
    0
    """
    return _argparse_int(text, 0)
