"""Alias-free layers (Michaeli, Michaeli & Soudry, "Alias-Free Convnets: Fractional Shift Invariance via Polynomial
Activations", CVPR 2023).

Aliasing comes from two places: subsampling a signal whose spectrum reaches past the new Nyquist frequency, and
pointwise nonlinearities, which widen the spectrum. Here

* :func:`ideal_lowpass` keeps the frequencies strictly below ``1 / (2 * factor)`` cycles per pixel on each axis (an
  FFT mask: circular, exactly linear and equivariant to circular shifts);
* :class:`AliasFreeDownsample` low-passes to the new band, then keeps every ``stride``-th pixel: lossless for the
  band-limited result, so an integer shift of its input becomes a band-limited fractional shift of its output;
* :class:`PolynomialActivation` applies ``c0 + c1 x + c2 x^2`` on a grid upsampled twice (ideal interpolation), where
  the square's doubled spectrum still fits, then low-passes and subsamples back: a band-limited input shifted by
  half a pixel gives the output shifted by half a pixel;
* :class:`InputLowpass` removes a map's Nyquist frequency, the one component a fractional shift cannot move exactly.

With circular padding everywhere and global average pooling at the end (the mean is the zero frequency, which no
band-limited shift changes), a network of these is invariant to circular integer and half-pixel shifts of its input
up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.validation import check_images, check_int, check_number


def _band_mask(size: int, factor: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """1 for the DFT bins of a ``size``-point axis below ``1 / (2 * factor)`` cycles per pixel, else 0."""
    return (torch.fft.fftfreq(size, device=device).abs() < 0.5 / factor).to(dtype)


def ideal_lowpass(x: Tensor, factor: int = 1) -> Tensor:
    """``x`` (``(..., H, W)``) with every frequency at or above ``1 / (2 * factor)`` cycles per pixel on either axis
    removed (``factor=1``: only the Nyquist row and column of even sizes). Computed in at least float32."""
    work = torch.promote_types(x.dtype, torch.float32)
    height, width = x.shape[-2:]
    mask = _band_mask(height, factor, x.device, work)[:, None] * _band_mask(width, factor, x.device, work)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(x.to(work)) * mask).real.to(x.dtype)


def ideal_upsample2(x: Tensor) -> Tensor:
    """``x`` interpolated onto a grid twice as fine (``(..., 2H, 2W)``) by zero-padding its spectrum: exact for maps
    without Nyquist energy (as :func:`ideal_lowpass` leaves them). Computed in at least float32."""
    work = torch.promote_types(x.dtype, torch.float32)
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(work)), dim=(-2, -1))
    padded = F.pad(spectrum, (width // 2, width - width // 2, height // 2, height - height // 2))
    fine = torch.fft.ifft2(torch.fft.ifftshift(padded, dim=(-2, -1))).real * 4  # 4: the finer grid's DFT scale
    return fine.to(x.dtype)


class InputLowpass(nn.Module):
    """Remove the Nyquist row and column of the input (:func:`ideal_lowpass` with ``factor=1``)."""

    def forward(self, x: Tensor) -> Tensor:
        check_images("InputLowpass", "input", x)
        return ideal_lowpass(x, 1)


class AliasFreeDownsample(nn.Module):
    """Ideal low-pass to the new band, then keep every ``stride``-th pixel (sizes must be multiples of ``stride``)."""

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = check_int("AliasFreeDownsample", "stride", stride, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_images("AliasFreeDownsample", "input", x)
        height, width = x.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"AliasFreeDownsample: input must have sizes divisible by stride={self.stride}, got {height}x{width}"
            )
        return ideal_lowpass(x, self.stride)[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class PolynomialActivation(nn.Module):
    """``c0 + c1 x + c2 x^2`` computed alias-free: on the twice-upsampled map, then low-passed and subsampled back.

    The default coefficients are the least-squares fit of ReLU under a standard normal input (0.348, 0.5, 0.0505):
    after batch normalization the activation behaves roughly like a ReLU. They are fixed (not parameters), so the
    activation adds nothing to a state dict.
    """

    def __init__(self, c0: float = 0.348, c1: float = 0.5, c2: float = 0.0505) -> None:
        super().__init__()
        owner = "PolynomialActivation"
        self.c0, self.c1, self.c2 = (check_number(owner, name, c) for name, c in (("c0", c0), ("c1", c1), ("c2", c2)))

    def forward(self, x: Tensor) -> Tensor:
        check_images("PolynomialActivation", "input", x)
        fine = ideal_upsample2(ideal_lowpass(x, 1))
        activated = self.c0 + self.c1 * fine + self.c2 * fine * fine
        return ideal_lowpass(activated, 2)[..., ::2, ::2]

    def extra_repr(self) -> str:
        return f"c0={self.c0}, c1={self.c1}, c2={self.c2}"
