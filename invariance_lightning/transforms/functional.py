"""Low-level geometric operations on image batches ``(N, C, H, W)`` used by the transform sequences.

Conventions: a shift ``(dx, dy)`` moves content right by ``dx`` columns and down by ``dy`` rows.
Integer shifts are exact copies of pixels; fractional shifts are band-limited (FFT) for circular
boundaries and bilinear otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.geometry.transform import translate
from torch import Tensor


def pad_2d(images: Tensor, left: int, right: int, top: int, bottom: int, mode: str, fill: float = 0.0) -> Tensor:
    """Pad the last two dims; ``mode`` is ``"zeros"`` (constant ``fill``), ``"reflect"``, ``"replicate"`` or
    ``"circular"``.

    Unlike ``F.pad`` it works on maps of any size: reflect padding not smaller than the map falls back to
    replicate, and circular padding wraps as often as needed (by modular indexing, so it stays exactly
    equivariant to circular shifts).

    >>> pad_2d(torch.tensor([[1.0, 2.0]]), 3, 0, 0, 0, "circular").tolist()
    [[2.0, 1.0, 2.0, 1.0, 2.0]]
    """
    padding = (left, right, top, bottom)
    if mode == "zeros":
        return F.pad(images, padding, mode="constant", value=fill)
    height, width = images.shape[-2:]
    if mode == "circular" and (max(left, right) > width or max(top, bottom) > height):
        rows = torch.arange(-top, height + bottom, device=images.device) % height
        cols = torch.arange(-left, width + right, device=images.device) % width
        return images.index_select(-2, rows).index_select(-1, cols)
    if mode == "reflect" and (max(left, right) >= width or max(top, bottom) >= height):
        mode = "replicate"
    return F.pad(images, padding, mode=mode)


def center_crop(images: Tensor, height: int, width: int) -> Tensor:
    """The central ``height`` x ``width`` window (an odd margin leaves its extra pixel at the bottom/right)."""
    top = (images.shape[-2] - height) // 2
    left = (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def resize(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize, antialiased when shrinking.

    ``F.interpolate(antialias=True)`` is used rather than kornia's ``resize``, whose antialiasing is
    a Gaussian pre-blur approximation; torch's matches PIL's area-correct triangle filter. It has
    no CPU kernel for float16/bfloat16, so those resize in float32 and are cast back.
    """
    if (height, width) == tuple(images.shape[-2:]):
        return images
    work_dtype = torch.promote_types(images.dtype, torch.float32)
    resized = F.interpolate(
        images.to(work_dtype), size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.to(images.dtype)


def fit_to_size(images: Tensor, height: int, width: int, mode: str, fill: float = 0.0) -> Tensor:
    """Centre ``images`` in a ``height`` x ``width`` frame: pad (``mode``) where smaller, crop where larger."""
    h, w = images.shape[-2:]
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h or pad_w:
        images = pad_2d(images, pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2, mode, fill)
    return center_crop(images, height, width)


def embedded_size(height: int, width: int, fraction: float) -> tuple[int, int]:
    """Size of an image shrunk to ``fraction`` of ``height`` x ``width`` (at least one pixel)."""
    return max(1, round(height * fraction)), max(1, round(width * fraction))


def embed_in_canvas(images: Tensor, fraction: float, fill: float = 0.0) -> Tensor:
    """Shrink each image to ``fraction`` of its size and centre it on a canvas of ``fill`` of the original size."""
    height, width = images.shape[-2:]
    small = resize(images, *embedded_size(height, width, fraction))
    return fit_to_size(small, height, width, "zeros", fill)


def integer_shift(images: Tensor, dx: int, dy: int, boundary: str, fill: float = 0.0) -> Tensor:
    """Exact shift by whole pixels; ``|dx| < W`` and ``|dy| < H`` (``reflect`` and ``circular`` need it)."""
    height, width = images.shape[-2:]
    padded = pad_2d(images, max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0), boundary, fill)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + height, left : left + width]


def fourier_shift(images: Tensor, dx: float, dy: float) -> Tensor:
    """Band-limited circular shift: multiply the 2-D spectrum by a linear phase.

    Exact for integer shifts (up to float rounding) and composes exactly (two shifts by 0.5 equal
    one by 1) for signals without energy at the Nyquist frequency, which odd sizes never have. For
    even sizes the output is the real part of the band-limited interpolant: the Nyquist row is
    shifted by ``dx`` and scaled by ``cos(pi * dy)``, the Nyquist column shifted by ``dy`` and
    scaled by ``cos(pi * dx)``, and the corner term (both Nyquist) scaled by ``cos(pi * (dx + dy))``.
    """
    if images.numel() == 0:  # MKL's FFT rejects empty batches
        return images.clone()
    work_dtype = torch.promote_types(images.dtype, torch.float32)
    height, width = images.shape[-2:]
    freq_y = torch.fft.fftfreq(height, device=images.device, dtype=work_dtype)
    freq_x = torch.fft.fftfreq(width, device=images.device, dtype=work_dtype)
    angle = -2.0 * math.pi * (freq_y[:, None] * dy + freq_x[None, :] * dx)
    phase = torch.polar(torch.ones_like(angle), angle)
    spectrum = torch.fft.fft2(images.to(work_dtype))
    return torch.fft.ifft2(spectrum * phase).real.to(images.dtype)


def bilinear_shift(images: Tensor, dx: float, dy: float, boundary: str, fill: float = 0.0) -> Tensor:
    """Sub-pixel shift by bilinear interpolation (kornia's ``translate``).

    ``"zeros"`` vacates to ``fill`` (shifting ``images - fill`` with zero padding, as ``grid_sample``
    only pads with 0); ``"reflect"`` uses ``grid_sample``'s reflection about the border pixel
    centres, which matches ``F.pad``'s ``"reflect"``.
    """
    translation = images.new_tensor([[dx, dy]]).expand(images.shape[0], 2)
    if boundary == "reflect":
        return translate(images, translation, mode="bilinear", padding_mode="reflection", align_corners=True)
    if boundary == "zeros":
        return translate(images - fill, translation, mode="bilinear", padding_mode="zeros", align_corners=True) + fill
    raise ValueError(f"bilinear_shift supports boundary 'zeros' or 'reflect', got {boundary!r}")


def shift(images: Tensor, dx: float, dy: float, boundary: str, fill: float = 0.0) -> Tensor:
    """Shift by ``(dx, dy)`` pixels: exact for integers, FFT (circular) or bilinear (others) for fractions."""
    if float(dx).is_integer() and float(dy).is_integer():
        return integer_shift(images, int(dx), int(dy), boundary, fill)
    if boundary == "circular":
        return fourier_shift(images, dx, dy)
    return bilinear_shift(images, dx, dy, boundary, fill)
