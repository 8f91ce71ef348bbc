"""BlurPool2d against a direct NumPy computation from its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from invariance_lightning.nn import BlurPool2d, binomial_filter2d

NUMPY_PAD = {"reflect": "reflect", "replicate": "edge", "zeros": "constant", "circular": "wrap"}


def reference_blurpool(x: np.ndarray, filter_size: int, stride: int, mode: str) -> np.ndarray:
    """Binomial filter from math.comb, pad (k-1)//2 before and k//2 after, correlate, keep every stride-th pixel."""
    row = np.array([math.comb(filter_size - 1, i) for i in range(filter_size)], dtype=np.float64)
    kernel = np.outer(row, row) / row.sum() ** 2
    before, after = (filter_size - 1) // 2, filter_size // 2
    padded = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)), mode=NUMPY_PAD[mode])
    height, width = x.shape[-2:]
    out_h, out_w = -(-height // stride), -(-width // stride)
    out = np.zeros((*x.shape[:2], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, stride * i : stride * i + filter_size, stride * j : stride * j + filter_size]
            out[:, :, i, j] = (window * kernel).sum(axis=(-2, -1))
    return out


@pytest.mark.parametrize("filter_size", range(1, 8))
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros", "circular"])
@pytest.mark.parametrize("size", [(8, 8), (9, 12)])
def test_matches_direct_computation(filter_size: int, stride: int, mode: str, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    layer = BlurPool2d(3, filter_size, stride, mode).double()
    expected = reference_blurpool(x.numpy(), filter_size, stride, mode)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["replicate", "zeros", "circular"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2)])
def test_maps_smaller_than_padding(mode: str, size: tuple[int, int]) -> None:
    x = torch.randn(1, 2, *size, dtype=torch.float64)
    layer = BlurPool2d(2, 7, 2, mode).double()
    np.testing.assert_allclose(layer(x).numpy(), reference_blurpool(x.numpy(), 7, 2, mode), atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 8)])
def test_reflect_falls_back_to_replicate_on_tiny_maps(size: tuple[int, int]) -> None:
    # Reflect padding of 3 needs maps of at least 4 pixels; smaller ones are replicate-padded.
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    out = BlurPool2d(4, 7, 2, "reflect").double()(x)
    np.testing.assert_allclose(out.numpy(), reference_blurpool(x.numpy(), 7, 2, "replicate"), atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (1, 5)])
def test_filter_size_one_is_plain_subsampling(stride: int, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    assert torch.equal(BlurPool2d(3, 1, stride)(x), x[:, :, ::stride, ::stride])


@pytest.mark.parametrize("filter_size", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("height", [5, 8, 15, 32])
def test_output_size_equals_strided_conv_and_maxpool(filter_size: int, height: int) -> None:
    x = torch.randn(1, 4, height, height + 3)
    expected = nn.Conv2d(4, 4, 3, stride=2, padding=1)(x).shape
    assert nn.MaxPool2d(3, 2, 1)(x).shape == expected
    assert BlurPool2d(4, filter_size, 2)(x).shape == expected


def test_circular_padding_is_equivariant_to_circular_shifts_by_the_stride() -> None:
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    layer = BlurPool2d(3, 5, 2, "circular").double()
    shifted = layer(torch.roll(x, (4, -6), (2, 3)))
    torch.testing.assert_close(shifted, torch.roll(layer(x), (2, -3), (2, 3)), rtol=0, atol=1e-12)


def test_filter_is_a_non_persistent_buffer() -> None:
    layer = BlurPool2d(5, 4)
    assert list(layer.parameters()) == []
    assert layer.state_dict() == {}
    assert layer.filter.shape == (5, 1, 4, 4)
    torch.testing.assert_close(layer.filter.sum(dim=(1, 2, 3)), torch.ones(5))
    assert layer.double().filter.dtype == torch.float64


# Binomial taps C(k-1, i) / 2^(k-1), written out by hand for every supported filter_size.
HAND_TAPS = {
    1: [1.0],
    2: [1 / 2, 1 / 2],
    3: [1 / 4, 2 / 4, 1 / 4],
    4: [1 / 8, 3 / 8, 3 / 8, 1 / 8],
    5: [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16],
    6: [1 / 32, 5 / 32, 10 / 32, 10 / 32, 5 / 32, 1 / 32],
    7: [1 / 64, 6 / 64, 15 / 64, 20 / 64, 15 / 64, 6 / 64, 1 / 64],
}


@pytest.mark.parametrize("filter_size", sorted(HAND_TAPS))
def test_filter_taps_are_the_normalized_binomial_outer_product(filter_size: int) -> None:
    taps = torch.tensor(HAND_TAPS[filter_size], dtype=torch.float64)
    expected = taps[:, None] * taps[None, :]  # 2-D filter: outer product of the 1-D taps
    assert torch.equal(binomial_filter2d(filter_size, torch.float64), expected)
    layer = BlurPool2d(2, filter_size)
    assert torch.equal(layer.filter, expected.float().expand(2, 1, filter_size, filter_size))


def test_default_padding_is_reflect() -> None:
    # 3x3 impulse of 4 at the centre; outputs sit on input pixels (0, 0), (0, 2), (2, 0), (2, 2). Reflect
    # padding mirrors row/column -1 onto row/column 1, so each output's 3x3 window holds the impulse in all
    # four corners (weight 1/16 each): 4 * 4 / 16 = 1. Zero, replicate or circular padding would see it once: 0.25.
    x = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]])
    layer = BlurPool2d(1)
    assert (layer.filter_size, layer.stride, layer.padding_mode) == (3, 2, "reflect")
    assert torch.equal(layer(x), torch.ones(1, 1, 2, 2))
    assert torch.equal(BlurPool2d(1, padding_mode="zeros")(x), torch.full((1, 1, 2, 2), 0.25))


def test_binomial_filter2d() -> None:
    expected = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    torch.testing.assert_close(binomial_filter2d(3), expected)
    assert torch.equal(binomial_filter2d(1), torch.ones(1, 1))


def test_gradients_flow() -> None:
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    layer = BlurPool2d(2, 3, 2).double()
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels": 0}, ValueError, "^BlurPool2d: channels must be an int >= 1, got 0$"),
        ({"channels": 3, "filter_size": 0}, ValueError, r"^BlurPool2d: filter_size must be an int in \[1, 7\], got 0$"),
        ({"channels": 3, "filter_size": 8}, ValueError, r"^BlurPool2d: filter_size must be an int in \[1, 7\], got 8$"),
        (
            {"channels": 3, "filter_size": 3.0},
            TypeError,
            r"^BlurPool2d: filter_size must be an int in \[1, 7\], got float 3.0$",
        ),
        ({"channels": True}, TypeError, "^BlurPool2d: channels must be an int >= 1, got bool True$"),
        ({"channels": 3, "stride": 0}, ValueError, "^BlurPool2d: stride must be an int >= 1, got 0$"),
        (
            {"channels": 3, "padding_mode": "wrap"},
            ValueError,
            "^BlurPool2d: padding_mode must be one of .* got 'wrap'$",
        ),
        ({"channels": 3, "padding_mode": 0}, TypeError, "^BlurPool2d: padding_mode must be one of .* got int 0$"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        BlurPool2d(**kwargs)


def test_invalid_inputs() -> None:
    layer = BlurPool2d(3)
    with pytest.raises(
        ValueError, match=r"^BlurPool2d: input must be a floating-point \(N, C, H, W\) tensor, got shape \(3, 8, 8\)"
    ):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"^BlurPool2d: input must have C=3 channels \(N, C, H, W\), got shape \(1, 4, 8, 8\) and dtype torch.float32$",
    ):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(TypeError, match="floating-point .* got shape .* and dtype torch.int64$"):
        layer(torch.ones(1, 3, 8, 8, dtype=torch.long))
