"""circular_conv2d and CircularConv2d against the padded-copy definition (NumPy wrap padding, torch's circular pad)."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from invariance_lightning.models import antialias, cifar_resnet
from invariance_lightning.nn import BlurPool2d, LPS2d, circular
from invariance_lightning.nn.circular import CircularConv2d, circular_conv2d, make_conv2d

# (kernel, stride, padding (h, w), dilation, groups, height, width): odd and even sizes, strided outputs that do and
# do not reach the trailing frame, dilation, groups, unequal paddings, padding as large as the map.
GEOMETRIES = [
    (3, 1, (1, 1), 1, 1, 8, 8),
    (3, 2, (1, 1), 1, 1, 8, 8),
    (3, 2, (1, 1), 1, 1, 9, 7),
    (7, 2, (3, 3), 1, 1, 16, 15),
    (5, 1, (2, 2), 1, 2, 6, 6),
    (3, 1, (1, 1), 2, 1, 9, 9),
    (3, 2, (1, 1), 1, 1, 3, 3),
    (4, 2, (1, 1), 1, 1, 9, 10),
    (3, 3, (1, 1), 1, 4, 10, 11),
    (3, 1, (2, 2), 1, 1, 2, 2),
    (3, 1, (1, 0), 1, 1, 5, 6),
    (1, 1, (0, 0), 1, 1, 5, 5),
]


def numpy_circular_conv(
    x: np.ndarray, w: np.ndarray, stride: int, padding: tuple[int, int], dilation: int, groups: int
):
    """Wrap-pad with NumPy, then correlate window by window (the definition)."""
    pad_h, pad_w = padding
    padded = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)), mode="wrap")
    out_channels, group_in, kernel, _ = w.shape
    extent = dilation * (kernel - 1) + 1
    out_h = (padded.shape[2] - extent) // stride + 1
    out_w = (padded.shape[3] - extent) // stride + 1
    out = np.zeros((x.shape[0], out_channels, out_h, out_w))
    per_group = out_channels // groups
    for o in range(out_channels):
        channels = slice(o // per_group * group_in, (o // per_group + 1) * group_in)
        for i in range(out_h):
            for j in range(out_w):
                rows = slice(i * stride, i * stride + extent, dilation)
                cols = slice(j * stride, j * stride + extent, dilation)
                out[:, o, i, j] = (padded[:, channels, rows, cols] * w[o]).sum(axis=(1, 2, 3))
    return out


#: The two fast paths and the autograd node each leaves: the wrap-padded copy (small maps) and the strips (large).
PATHS = {"padded_copy": (10**9, "_PaddedCircularConv2dBackward"), "strips": (0, "_CircularConv2dBackward")}


@pytest.fixture(params=sorted(PATHS))
def fast_path(request, monkeypatch) -> str:
    """Run the test on one fast path, whatever the map size: returns the name of the autograd node it leaves."""
    max_pixels, node = PATHS[request.param]
    monkeypatch.setattr(circular, "PADDED_COPY_MAX_PIXELS", max_pixels)
    return node


def test_the_map_size_picks_the_path_when_training() -> None:
    small, large = (torch.randn(1, 2, n, n, requires_grad=True) for n in (16, 17))
    w = torch.randn(2, 2, 3, 3)
    assert type(circular_conv2d(small, w, padding=1).grad_fn).__name__ == "_PaddedCircularConv2dBackward"
    assert type(circular_conv2d(large, w, padding=1).grad_fn).__name__ == "_CircularConv2dBackward"


def test_inference_shifts_the_output_bit_for_bit_with_a_circular_shift_of_the_input() -> None:
    """Without autograd every map takes the padded copy: exact equivariance, which keeps APS/LPS choices between
    near-equal components from flipping under a shift (the strips round their border differently, ~1e-6)."""
    x, w = torch.randn(2, 16, 32, 32), torch.randn(16, 16, 3, 3)
    with torch.no_grad():
        for shift in [(0, 1), (1, 0), (5, 17)]:
            shifted_output = torch.roll(circular_conv2d(x, w, padding=1), shift, (2, 3))
            assert torch.equal(circular_conv2d(torch.roll(x, shift, (2, 3)), w, padding=1), shifted_output)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_forward_equals_the_wrap_padded_correlation(geometry, fast_path: str) -> None:
    kernel, stride, padding, dilation, groups, height, width = geometry
    x = torch.randn(2, 4, height, width, dtype=torch.float64, requires_grad=True)  # recording: either path
    w = torch.randn(8, 4 // groups, kernel, kernel, dtype=torch.float64)
    out = circular_conv2d(x, w, None, stride, padding, dilation, groups)
    expected = numpy_circular_conv(x.detach().numpy(), w.numpy(), stride, padding, dilation, groups)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        np.testing.assert_allclose(
            circular_conv2d(x, w, None, stride, padding, dilation, groups).numpy(), expected, rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_gradients_equal_those_of_the_padded_copy(geometry, channels_last: bool, fast_path: str) -> None:
    kernel, stride, padding, dilation, groups, height, width = geometry
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, height, width, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(8, 4 // groups, kernel, kernel, dtype=torch.float64).contiguous(memory_format=layout)
    b = torch.randn(8, dtype=torch.float64)
    w.requires_grad_(), b.requires_grad_()
    pad_h, pad_w = padding
    reference = F.conv2d(F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="circular"), w, b, stride, 0, dilation, groups)
    fast = circular_conv2d(x, w, b, stride, padding, dilation, groups)
    assert type(fast.grad_fn).__name__ == fast_path  # the fast path ran
    assert fast.is_contiguous(memory_format=layout)
    upstream = torch.randn_like(reference)
    for got, want in zip(
        torch.autograd.grad(fast, (x, w, b), upstream), torch.autograd.grad(reference, (x, w, b), upstream)
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gradcheck(fast_path: str) -> None:
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *args: circular_conv2d(*args, stride=2, padding=1), (x, w, b))


def test_padding_that_wraps_more_than_once_is_still_circular() -> None:
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64)
    w = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    expected = numpy_circular_conv(x.numpy(), w.numpy(), 1, (3, 3), 1, 1)
    np.testing.assert_allclose(circular_conv2d(x, w, padding=3).numpy(), expected, atol=1e-10)


def test_the_module_keeps_nn_conv2d_state_dict_and_shares_parameters() -> None:
    plain = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular")
    fast = CircularConv2d.from_conv(plain)
    assert fast.weight is plain.weight and fast.bias is plain.bias
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    assert isinstance(make_conv2d(3, 5, 3, padding=1, padding_mode="circular"), CircularConv2d)
    assert type(make_conv2d(3, 5, 3, padding=1)) is nn.Conv2d
    with pytest.raises(ValueError, match="CircularConv2d: padding must be an int or a pair"):
        CircularConv2d(3, 5, 3, padding="same")


def test_networks_use_it_wherever_they_pad_circularly() -> None:
    network = cifar_resnet(20, downsample="lps", padding_mode="circular")
    padded = [m for m in network.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)]
    assert padded and all(isinstance(m, CircularConv2d) for m in padded)  # stem, blocks, LPS scorers
    assert all(type(m) is nn.Conv2d for m in cifar_resnet(20).modules() if isinstance(m, nn.Conv2d))


def test_antialias_circular_padding_gives_the_same_outputs_as_torch_circular_convs() -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10).eval()
    converted = antialias(source, "aps", circular_padding=True).eval()
    assert converted.state_dict().keys() == source.state_dict().keys()
    fast_convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d) and m.padding_mode == "circular"]
    assert any(isinstance(m, CircularConv2d) for m in fast_convs)
    reference = copy.deepcopy(converted)
    for module in reference.modules():  # the same model on torch's own circular padding (F.pad copies)
        if isinstance(module, nn.Conv2d) and module.padding_mode == "circular":
            module._conv_forward = types.MethodType(nn.Conv2d._conv_forward, module)
    x = torch.randn(2, 3, 72, 72)  # odd intermediate maps
    with torch.no_grad():
        torch.testing.assert_close(converted(x), reference(x), rtol=1e-4, atol=1e-4)


def test_blurpool_and_lps_scorer_take_the_fast_path_when_circular() -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    blurred = BlurPool2d(4, 3, 2, "circular")(x)
    assert "CircularConv2d" in type(blurred.grad_fn).__name__
    assert isinstance(LPS2d(4).scorer[0], CircularConv2d)


def test_reference_path_under_tracing_and_autocast() -> None:
    conv = CircularConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)
    traced = torch.jit.trace(conv, x)
    assert "PythonOp" not in str(traced.graph)  # torch's own ops, which exporters understand
    other = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(traced(other), conv(other))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), conv(x), rtol=2e-2, atol=5e-2)
