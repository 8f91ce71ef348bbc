"""Alias-free layers (Michaeli, Michaeli & Soudry, "Alias-Free Convnets: Fractional Shift Invariance via Polynomial
Activations", CVPR 2023).

Aliasing comes from two places: subsampling a signal whose spectrum reaches past the new Nyquist frequency, and
pointwise nonlinearities, which widen the spectrum. Here

* :func:`ideal_lowpass` keeps the frequencies strictly below ``1 / (2 * factor)`` cycles per pixel on each axis
  (circular, exactly linear and equivariant to circular shifts);
* :class:`AliasFreeDownsample` low-passes to the new band, then keeps every ``stride``-th pixel: lossless for the
  band-limited result, so an integer shift of its input becomes a band-limited fractional shift of its output;
* :class:`PolynomialActivation` applies ``c0 + c1 x + c2 x^2`` on a grid upsampled twice (ideal interpolation), where
  the square's doubled spectrum still fits, then low-passes and subsamples back: a band-limited input shifted by
  half a pixel gives the output shifted by half a pixel;
* :class:`InputLowpass` removes a map's Nyquist frequency, the one component a fractional shift cannot move exactly.
  A network whose first nonlinearity is a :class:`PolynomialActivation` needs none: the activation's upsampling keeps
  only the frequencies below Nyquist, and the linear layers before it (convs, batch norm in eval mode) do not mix
  frequencies, so its output, and the network's, ignores the input's Nyquist frequency.

With circular padding everywhere and global average pooling at the end (the mean is the zero frequency, which no
band-limited shift changes), a network of these is invariant to circular integer and half-pixel shifts of its input
up to float rounding.

Every operator here is an ideal (DFT-domain) filter along each axis, applied as a real matrix product, ``M_h @ x @
M_w.T``, with ``M`` a Dirichlet kernel built from the map's size: the same numbers as masking the FFT, but real
matrix products are faster than complex FFTs on the small maps of these networks (benchmarks/results/
downsampling_cost.md), and they export to ONNX with dynamic sizes (ONNX has no complex tensors).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invariance_lightning.nn.layout import memory_format_of
from invariance_lightning.nn.tracing import capturing_graph
from invariance_lightning.validation import check_images, check_int, check_number


def _band_operator(
    out_size: int, in_size: int, out_step: int, in_step: int, period: int, max_bin: int, like: Tensor
) -> Tensor:
    """The real ``(out_size, in_size)`` matrix of an ideal band-limited resampling along one axis.

    Input sample ``j`` sits at ``in_step * j`` and output sample ``p`` at ``out_step * p`` on a circular grid of
    ``period`` points; the signal is the sum of the input's DFT bins ``|k| <= max_bin`` (of ``period / in_step``
    points), so ``M[p, j] = (in_step / period) * sum_{|k| <= max_bin} cos(2 pi k (out_step p - in_step j) / period)``,
    a Dirichlet kernel, evaluated in closed form on integer phases reduced modulo the period (exact in float32).
    The band is symmetric, so the operator is real: a low-pass is ``M @ x``, no complex numbers.
    """
    work = torch.promote_types(like.dtype, torch.float32)
    rows = torch.arange(out_size, device=like.device)[:, None] * out_step
    cols = torch.arange(in_size, device=like.device)[None, :] * in_step
    # the moduli as tensors: the ONNX exporter cannot convert "tensor % symbolic size" with a dynamic size
    phase = torch.remainder(rows - cols, _integer(period, rows))  # integers in [0, period)
    taps = 2 * max_bin + 1
    numerator = torch.sin(torch.pi * torch.remainder(taps * phase, _integer(2 * period, rows)).to(work) / period)
    denominator = torch.sin(torch.pi * phase.to(work) / period)
    at_zero = phase == 0
    kernel = torch.where(at_zero, torch.full_like(numerator, taps), numerator / torch.where(at_zero, 1.0, denominator))
    return kernel * (in_step / period)  # in the work dtype: a bf16/fp16 map still gets float32 filters


def _integer(value: int, like: Tensor) -> Tensor:
    return torch.scalar_tensor(value, dtype=like.dtype, device=like.device)


def _highest_bin(size: int, factor: int) -> int:
    """The highest DFT bin of a ``size``-point axis strictly below ``1 / (2 * factor)`` cycles per pixel."""
    return (size + 2 * factor - 1) // (2 * factor) - 1


def _product(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols.T`` (operators from :func:`_band_operator`) over the last two dims, in the operators' work
    dtype, as a contiguous NCHW tensor: ``x @ cols.T`` first, one matrix product over every row of the batch."""
    return rows @ (x.to(rows.dtype).contiguous() @ cols.T)


def _like(result: Tensor, x: Tensor) -> Tensor:
    """A work-dtype NCHW ``result`` back in ``x``'s dtype and memory format."""
    return result.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """:func:`_product` back in ``x``'s dtype and memory format."""
    return _like(_product(x, rows, cols), x)


def _upsample_operators(x: Tensor) -> tuple[Tensor, Tensor]:
    """The row and column operators of :func:`ideal_upsample2` for ``x``'s size."""
    height, width = x.shape[-2:]
    rows = _band_operator(2 * height, height, 1, 2, 2 * height, _highest_bin(height, 1), x)
    cols = _band_operator(2 * width, width, 1, 2, 2 * width, _highest_bin(width, 1), x)
    return rows, cols


def _lowpass_operators(x: Tensor, factor: int, step: int) -> tuple[Tensor, Tensor]:
    """The row and column operators of :func:`_lowpass_subsample` for ``x``'s size."""
    height, width = x.shape[-2:]
    rows = _band_operator(height // step, height, step, 1, height, _highest_bin(height, factor), x)
    cols = _band_operator(width // step, width, step, 1, width, _highest_bin(width, factor), x)
    return rows, cols


def _lowpass_subsample(x: Tensor, factor: int, step: int) -> Tensor:
    """Keep the frequencies below ``1 / (2 * factor)`` cycles per pixel, then every ``step``-th sample."""
    return _separable(x, *_lowpass_operators(x, factor, step))


def ideal_lowpass(x: Tensor, factor: int = 1) -> Tensor:
    """``x`` (``(..., H, W)``) with every frequency at or above ``1 / (2 * factor)`` cycles per pixel on either axis
    removed (``factor=1``: only the Nyquist row and column of even sizes). Computed in at least float32."""
    return _lowpass_subsample(x, factor, 1)


def ideal_upsample2(x: Tensor) -> Tensor:
    """``x`` interpolated onto a grid twice as fine (``(..., 2H, 2W)``) from its frequencies below Nyquist (the
    Nyquist row and column of even sizes are dropped, as :func:`ideal_lowpass` would): exact for such maps, the
    samples stay where they were. Computed in at least float32."""
    return _separable(x, *_upsample_operators(x))


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
        stride = self.stride
        if height % stride or width % stride:
            raise ValueError(
                f"AliasFreeDownsample: input must have sizes divisible by stride={stride}, got {height}x{width}"
            )
        if capturing_graph():
            # the check again as graph operations, which an exported graph keeps with dynamic sizes (the Python check
            # above is decided once, at capture): a reshape into stride x stride blocks only fits divisible sizes, so
            # an ONNX runtime refuses the others (a Reshape error) instead of returning wrong logits
            blocks = x.reshape(x.shape[0], x.shape[1], height // stride, stride, width // stride, stride)
            x = blocks.reshape(x.shape[0], x.shape[1], height // stride * stride, width // stride * stride)
        return _lowpass_subsample(x, stride, stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


#: ``c0`` and ``c2`` of the least-squares quadratic fit of ReLU under a standard normal input: ``E[relu(x)] / 2`` and
#: ``(E[relu(x) x^2] - E[relu(x)]) / 2``, both ``1 / (2 sqrt(2 pi))``.
RELU_FIT_C0_C2 = 1 / (2 * math.sqrt(2 * math.pi))


class PolynomialActivation(nn.Module):
    """``c0 + c1 x + c2 x^2`` computed alias-free: on the twice-upsampled map, then low-passed and subsampled back.

    The default coefficients are the least-squares fit of ReLU under a standard normal input, ``c0 = c2 = 1 / (2
    sqrt(2 pi))`` (0.1995) and ``c1 = 1/2`` (its Hermite expansion cut after the square), so after batch normalization
    the activation behaves roughly like a ReLU. They are fixed (not parameters), so the activation adds nothing to a
    state dict; ``c2`` must be nonzero (without the square the map is linear).
    """

    def __init__(self, c0: float = RELU_FIT_C0_C2, c1: float = 0.5, c2: float = RELU_FIT_C0_C2) -> None:
        super().__init__()
        owner = "PolynomialActivation"
        self.c0, self.c1, self.c2 = (check_number(owner, name, c) for name, c in (("c0", c0), ("c1", c1), ("c2", c2)))
        if self.c2 == 0:
            raise ValueError(f"{owner}: c2 must be a nonzero number (c2 = 0 makes the activation linear), got {c2!r}")

    def forward(self, x: Tensor) -> Tensor:
        check_images("PolynomialActivation", "input", x)
        fine = _product(x, *_upsample_operators(x))
        # c0 + c1 f + c2 f^2 as c0 + c2 * (f * (f + c1 / c2)), with c2 folded into the subsampling operator: two passes
        # over the fine grid (four for the plain form), and the fine grid stays in the products' NCHW layout (converting
        # it to channels-last and back was most of this layer's cost; benchmarks/results/downsampling_cost.md)
        down_rows, down_cols = _lowpass_operators(fine, 2, 2)
        coarse = _product(fine * (fine + self.c1 / self.c2), self.c2 * down_rows, down_cols) + self.c0
        return _like(coarse, x)

    def extra_repr(self) -> str:
        return f"c0={self.c0}, c1={self.c1}, c2={self.c2}"
