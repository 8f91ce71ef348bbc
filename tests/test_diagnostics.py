"""Per-layer equivariance diagnostics against hand-checked layers and the pretrained CIFAR ResNet-20."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from invariance_lightning.diagnostics import EquivarianceReport, default_layers, layer_equivariance
from invariance_lightning.models.cifar_resnet import CIFAR_RESNET_NORMALIZE, load_cifar_resnet


class Subsample(nn.Module):
    """``x[:, :, ::2, ::2]``: exactly equivariant to even circular shifts, aliased by odd ones."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ::2, ::2]


class AddPattern(nn.Module):
    """``x + P`` for a fixed spatial pattern ``P``: a layer whose equivariance error is known in closed form."""

    def __init__(self, pattern: Tensor) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pattern


class Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


def circular_conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="circular")


def test_stride_one_circular_network_is_equivariant_at_every_layer():
    net = nn.Sequential(
        circular_conv(3, 8), nn.ReLU(), nn.Sequential(circular_conv(8, 8), nn.ReLU()), circular_conv(8, 4)
    )
    images = torch.rand(6, 3, 12, 12)
    report = layer_equivariance(net, images, layers=["0", "1", "2", "2.0", "3"], shift=(1, -2), pooled_shifts=[3])
    assert report.names == ["0", "1", "2.0", "2", "3"]  # execution order, not the order asked for
    for row in report:
        assert row.stride == (1.0, 1.0) and row.feature_shift == (1, -2)
        assert row.equivariance_error < 1e-5
        assert set(row.pooled_change_by_shift) == {(1, -2), (3, 3)}
        assert max(row.pooled_change_by_shift.values()) < 1e-5


def test_subsampling_is_equivariant_to_even_shifts_only():
    images = torch.rand(5, 2, 8, 8)
    odd = layer_equivariance(Subsample(), images, layers=[""], shift=1)[""]
    assert odd.stride == (2.0, 2.0) and odd.shape == (2, 4, 4)
    assert not odd.comparable and math.isnan(odd.equivariance_error) and "not comparable" in odd.note
    even = layer_equivariance(Subsample(), images, layers=[""], shift=2)[""]
    assert even.feature_shift == (1, 1) and even.equivariance_error == 0.0 and even.pooled_change < 1e-6
    # A diagonal 1-px roll moves the odd grid onto the sampled (even) one: pooled features are the odd-grid means.
    even_mean = images[:, :, ::2, ::2].mean(dim=(-2, -1))
    odd_mean = images[:, :, 1::2, 1::2].mean(dim=(-2, -1))
    expected = ((odd_mean - even_mean).norm(dim=1) / even_mean.norm(dim=1)).mean()
    assert odd.pooled_change == pytest.approx(float(expected), rel=1e-5)


def test_subsampling_a_grid_image_loses_it_entirely_after_one_pixel():
    grid = torch.zeros(1, 1, 6, 6)
    grid[..., ::2, ::2] = 1.0  # pooled after subsampling: 1; after a 1-px shift all ones sit off-grid: 0
    row = layer_equivariance(Subsample(), grid, layers=[""], pooled_shifts=[(1, 0), (2, 0)])[""]
    assert row.pooled_change_by_shift == {(1, 1): 1.0, (1, 0): 1.0, (2, 0): 0.0}


def test_strided_conv_compares_only_multiples_of_its_stride():
    net = nn.Sequential(circular_conv(3, 4, stride=2))
    images = torch.rand(4, 3, 10, 10)
    assert not layer_equivariance(net, images, shift=1)["0"].comparable
    assert not layer_equivariance(net, images, shift=(2, 1))["0"].comparable
    row = layer_equivariance(net, images, shift=(2, -4))["0"]
    assert row.feature_shift == (1, -2) and row.equivariance_error < 1e-5


def test_error_is_the_mean_per_image_relative_error():
    pattern = torch.arange(25.0).reshape(1, 1, 5, 5) / 25
    images = torch.rand(3, 1, 5, 5) + torch.arange(3.0).reshape(3, 1, 1, 1)
    row = layer_equivariance(AddPattern(pattern), images, layers=[""], shift=(1, 0), batch_size=2)[""]
    expected_map = torch.roll(images + pattern, 1, dims=-1)
    diff = (pattern - torch.roll(pattern, 1, dims=-1)).norm()
    expected = (diff / expected_map.flatten(1).norm(dim=1)).mean()
    assert row.equivariance_error == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("mode", "exact_from"), [("zeros", 2), ("circular", 3)])
def test_zero_padding_errors_stay_in_a_border_band(mode, exact_from):
    # Shift (2, 0) through a zero-padded 3x3 conv. Zero fill: the 2 vacated columns hold the bias
    # instead of 0, and the 1 column beside the far edge loses its neighbour: exact from border 2.
    # Circular: the wrapped seam also meets the padding, spoiling shift + radius = 3 columns.
    conv = nn.Conv2d(2, 3, 3, padding=1)
    images = torch.rand(4, 2, 12, 12)
    for border in range(exact_from + 2):
        error = layer_equivariance(conv, images, layers=[""], shift=(2, 0), mode=mode, border=border)[""]
        assert (error.equivariance_error < 1e-6) == (border >= exact_from), border
    empty = layer_equivariance(conv, images, layers=[""], mode=mode, border=6)[""]
    assert math.isnan(empty.equivariance_error) and "no pixels" in empty.note


def test_normalize_is_applied_after_shifting():
    images = torch.rand(3, 1, 6, 6)
    pattern = torch.zeros(1, 1, 6, 6)
    stats = ((0.5,), (0.25,))
    row = layer_equivariance(AddPattern(pattern), images, layers=[""], normalize=stats, mode="zeros", border=0)[""]
    normalized = (images - 0.5) / 0.25
    # The zero band enters before normalizing, so it reads -2 where the shifted map has 0 (a zero fill).
    shifted = (torch.nn.functional.pad(images, (1, 0, 1, 0))[..., :6, :6] - 0.5) / 0.25
    expected_map = torch.nn.functional.pad(normalized, (1, 0, 1, 0))[..., :6, :6]
    expected = ((shifted - expected_map).flatten(1).norm(dim=1) / expected_map.flatten(1).norm(dim=1)).mean()
    assert row.equivariance_error == pytest.approx(float(expected), rel=1e-5)


def test_uint8_images_are_scaled_to_unit_range():
    pixels = torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8)
    net = nn.Sequential(Subsample(), AddPattern(torch.rand(1, 1, 3, 3)))
    from_uint8 = layer_equivariance(net, pixels, layers=["1"], pooled_shifts=[(0, 1)])["1"]
    from_float = layer_equivariance(net, pixels / 255.0, layers=["1"], pooled_shifts=[(0, 1)])["1"]
    assert from_uint8.pooled_change_by_shift == pytest.approx(from_float.pooled_change_by_shift, rel=1e-6)


def test_outputs_that_are_not_feature_maps():
    net = nn.Sequential(Subsample(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3), Pair())
    images = torch.rand(4, 1, 8, 8)
    report = layer_equivariance(net, images, layers=["3", "4"], shift=2, pooled_shifts=[1])
    linear = report["3"]
    assert linear.shape == (3,) and linear.stride is None and math.isnan(linear.equivariance_error)
    assert "not a feature map" in linear.note and linear.pooled_change < 1e-6
    with torch.no_grad():
        logits, shifted = net[:4](images), net[:4](torch.roll(images, (1, 1), dims=(-2, -1)))
    expected = ((shifted - logits).norm(dim=1) / logits.norm(dim=1)).mean()
    assert linear.pooled_change_by_shift[(1, 1)] == pytest.approx(float(expected), rel=1e-5)
    pair = report["4"]
    assert pair.shape is None and "not a tensor" in pair.note and math.isnan(pair.pooled_change)


def test_mode_and_hooks_are_restored_even_on_error():
    net = nn.Sequential(circular_conv(1, 2), nn.BatchNorm2d(2), nn.Linear(3, 3))
    net.train()
    net[1].eval()
    with pytest.raises(RuntimeError):  # the Linear cannot take a (N, 2, 4, 4) map
        layer_equivariance(net, torch.rand(2, 1, 4, 4))
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert all(not m._forward_hooks for m in net.modules())
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    layer_equivariance(net[:2], torch.rand(2, 1, 4, 4))
    assert seen == [False, False] and net.training and not net[1].training


def test_batching_does_not_change_the_result():
    net = nn.Sequential(circular_conv(3, 4, stride=2), nn.ReLU(), circular_conv(4, 4))
    images = torch.rand(7, 3, 8, 8)
    whole = layer_equivariance(net, images, shift=2, pooled_shifts=[1], batch_size=64)
    pieces = layer_equivariance(net, images, shift=2, pooled_shifts=[1], batch_size=3)
    for a, b in zip(whole, pieces):
        assert a.equivariance_error == pytest.approx(b.equivariance_error, rel=1e-6, abs=1e-9)
        assert a.pooled_change_by_shift == pytest.approx(b.pooled_change_by_shift, rel=1e-6, abs=1e-6)
        assert a.pooled_change_by_shift[(1, 1)] > 1e-3  # the strided layers do change


def test_default_layers_pick_convs_pools_blocks_and_the_classifier():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.MaxPool2d(2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
        nn.Linear(4, 2),
    )
    assert default_layers(net) == ["0", "1", "1.0", "1.0.0", "1.1", "2", "5"]


def test_report_helpers():
    report = layer_equivariance(nn.Sequential(Subsample(), nn.Flatten()), torch.rand(2, 1, 4, 4), layers=["0", "1"])
    assert isinstance(report, EquivarianceReport) and len(report) == 2 and report[1] is report["1"]
    table = report.to_markdown().splitlines()
    assert table[0].startswith("| layer | type | shape | stride | equiv. error @(1,1) | pooled change @(1,1)")
    assert table[2].startswith("| 0 | Subsample | 1x2x2 | 2 | n/a |") and "not comparable" in table[2]
    loaded = json.loads(json.dumps(report.as_dict()))
    assert loaded["0"]["stride"] == [2.0, 2.0] and set(loaded["1"]["pooled_change_by_shift"]) == {"1,1"}
    with pytest.raises(KeyError, match="layers"):
        report["2"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": ["layer9", "0"]}, ValueError, "unknown layers: 'layer9'.*valid names include"),
        ({"layers": ["0", "0"]}, ValueError, "repeat"),
        ({"layers": "0"}, TypeError, "sequence of module names"),
        ({"shift": 1.5}, TypeError, "shift must be an int or a"),
        ({"pooled_shifts": [(1, 2, 3)]}, TypeError, "pooled_shifts"),
        ({"shift": 8}, ValueError, "smaller than the image size"),
        ({"mode": "reflect"}, ValueError, "^layer_equivariance: mode must be one of .* got 'reflect'$"),
        ({"border": -1}, ValueError, "^layer_equivariance: border must be an int >= 0, got -1$"),
        ({"border": 1.0}, TypeError, "^layer_equivariance: border must be an int >= 0, got float 1.0$"),
        ({"batch_size": 0}, ValueError, "^layer_equivariance: batch_size must be an int >= 1, got 0$"),
        (
            {"normalize": ((0.5, 0.5, 0.5), (0.2, 0.2))},
            ValueError,
            r"^measure_equivariance: normalize must be a \(mean, std\) pair of equal lengths with std > 0",
        ),
        ({"normalize": 0.5}, TypeError, r"^measure_equivariance: normalize must be a \(mean, std\) pair .* got 0.5$"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    net = nn.Sequential(circular_conv(3, 2))
    with pytest.raises(error, match=match):
        layer_equivariance(net, torch.rand(2, 3, 8, 8), **kwargs)


def test_bad_images():
    net = nn.Sequential(circular_conv(3, 2))
    with pytest.raises(TypeError, match=r"images must be a tensor \(N, C, H, W\), got shape \(3, 8, 8\)"):
        layer_equivariance(net, torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="must be a uint8 or floating-point .* dtype torch.int32$"):
        layer_equivariance(net, torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="model"):
        layer_equivariance(lambda x: x, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"'00' \(did you mean \['0'\]\?\)"):
        layer_equivariance(net, torch.rand(2, 3, 8, 8), layers=["00"])


# --- the pretrained CIFAR-10 ResNet-20 (option-A shortcuts, zero padding) on real test images ---------------------

STAGE_ENDS = ["layer1.0", "layer1.2", "layer2.0", "layer2.2", "layer3.0", "layer3.2"]


@pytest.fixture(scope="module")
def cifar_images(cifar10_dir) -> Tensor:
    data = np.load(cifar10_dir / "cifar10_test.npz")
    pick = np.random.default_rng(0).permutation(len(data["labels"]))[:64]  # rows are sorted by class
    return torch.from_numpy(data["images"][pick]).permute(0, 3, 1, 2)


def resnet20(weights_dir, **kwargs):
    return load_cifar_resnet(weights_dir / "resnet20-12fca82f.th", **kwargs), CIFAR_RESNET_NORMALIZE


@pytest.mark.shared_data
def test_resnet20_is_equivariant_before_subsampling_up_to_its_zero_padded_border(
    cifar_images, cifar_resnet_weights_dir
):
    model, normalize = resnet20(cifar_resnet_weights_dir)
    # Receptive-field radius of layer1's output: 7 convs of radius 1 = 7 px. A circular 1-px shift meets the
    # zero padding at the image border, which spoils a band of the shift plus that radius: 8 px.
    interior = layer_equivariance(model, cifar_images, STAGE_ENDS, border=8, normalize=normalize)
    band = layer_equivariance(model, cifar_images, ["layer1.2"], border=7, normalize=normalize)["layer1.2"]
    for name in STAGE_ENDS[:2]:
        assert interior[name].stride == (1.0, 1.0) and interior[name].equivariance_error < 1e-5
    assert band.equivariance_error > 1e-5  # one pixel of the band left in: zero padding is the only error source
    for name in STAGE_ENDS[2:]:
        assert not interior[name].comparable and interior[name].stride[0] in (2.0, 4.0)
    # layer2.0 is still equivariant to 2-px shifts: radius 7 + 1 + 2 (conv2 at stride 2) = 10 px, plus the shift.
    two = layer_equivariance(model, cifar_images, ["layer2.0"], shift=2, border=12, normalize=normalize)["layer2.0"]
    assert two.feature_shift == (1, 1) and two.equivariance_error < 1e-5
    # Zero padding alone already moves pooled layer1 features by a few %; after subsampling they move much more.
    pooled = {name: interior[name].pooled_change for name in STAGE_ENDS}
    assert 0.01 < pooled["layer1.2"] < pooled["layer2.2"] < pooled["layer3.2"]
    assert min(pooled["layer3.0"], pooled["layer3.2"]) > 2.5 * max(pooled["layer1.0"], pooled["layer1.2"])


@pytest.mark.shared_data
def test_resnet20_with_circular_padding_is_invariant_only_to_multiples_of_its_stride(
    cifar_images, cifar_resnet_weights_dir
):
    # The same weights with circular padding: only the subsampling breaks equivariance (Azulay & Weiss, 2019).
    model, normalize = resnet20(cifar_resnet_weights_dir, padding_mode="circular")
    layers = ["layer1", "layer2", "layer3", "linear"]
    report = layer_equivariance(model, cifar_images, layers, shift=2, pooled_shifts=[1, 4], normalize=normalize)
    for name in ("layer1", "layer2"):
        assert report[name].feature_shift == (2 // int(report[name].stride[0]),) * 2
        assert report[name].equivariance_error < 1e-5
    assert not report["layer3"].comparable
    for name, stride in {"layer1": 1, "layer2": 2, "layer3": 4, "linear": 4}.items():
        for (s, _), change in report[name].pooled_change_by_shift.items():
            if s % stride == 0:
                assert change < 1e-5, (name, s)
            else:
                assert change > 1e-2, (name, s)  # at least 1000 times the float noise of the invariant cases
