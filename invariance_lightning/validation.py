"""The package's argument validators, shared by every layer (torch-only and Lightning alike).

One behaviour everywhere: a value of the wrong type raises ``TypeError``, a value of the right type but outside
what is allowed raises ``ValueError``, and every message starts with the owner (the class or function checking
its argument) and names the argument, what was expected and what was given. ``positive_int`` and
``nonnegative_int`` are ``argparse`` types for the command-line entry points.
"""

from __future__ import annotations

import argparse
import math
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "NonFiniteLogitsError",
    "check_choice",
    "check_feature_map",
    "check_finite_logits",
    "check_int",
    "check_number",
    "check_optional_int",
    "check_size",
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


def check_feature_map(owner: str, x: object, channels: int | None) -> None:
    """Require a 4-D ``(N, C, H, W)`` floating tensor with ``channels`` channels (when not None)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{owner} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point input, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for channels={channels}, got an input with {x.shape[1]} channels "
            f"(shape {tuple(x.shape)})"
        )


def check_finite_logits(owner: str, name: str, value: Tensor) -> Tensor:
    """Return the logits ``value`` if every entry is finite; :class:`NonFiniteLogitsError` otherwise.

    >>> check_finite_logits("f", "logits", torch.tensor([1.0, float("nan")]))
    Traceback (most recent call last):
    ...
    invariance_lightning.validation.NonFiniteLogitsError: f: logits must be finite, got 1 NaN or infinite values
    """
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        raise NonFiniteLogitsError(
            f"{owner}: {name} must be finite, got {int((~finite).sum())} NaN or infinite values"
        )
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
