"""antialias(): torchvision/timm/CIFAR ResNets keep their weights and shapes; placement and invariance checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.utils import _pair

from invariance_lightning.models import antialias, cifar_resnet, load_cifar_resnet
from invariance_lightning.nn import APS2d, APS2dFollower, BlurPool2d

# Full ResNet-18s, and one-block-per-stage ResNets built from the Bottleneck classes (same code paths, fast).
BACKBONES = {
    "torchvision_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "torchvision_bottleneck": lambda: torchvision.models.resnet.ResNet(
        torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10
    ),
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
    "timm_bottleneck": lambda: timm.models.resnet.ResNet(timm.models.resnet.Bottleneck, (1, 1, 1, 1), num_classes=10),
}


def strided_layers(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and max(_pair(module.stride)) > 1
    ]


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("method", ["blur", "aps"])
def test_converted_backbone_keeps_shapes_and_weights(name: str, method: str) -> None:
    plain = BACKBONES[name]().eval()
    converted = antialias(plain, method).eval()
    # "blur" keeps the stem conv strided by default (Zhang's pool_only); "aps" converts everything.
    assert strided_layers(converted) == (["conv1"] if method == "blur" else [])
    assert strided_layers(antialias(plain, method, stem_conv=True)) == []
    assert strided_layers(plain) != []  # the original is untouched
    assert converted.state_dict().keys() == plain.state_dict().keys()
    converted.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(converted.state_dict(), strict=True)
    for key, value in plain.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    with torch.no_grad():
        for size in (32, 37):
            x = torch.randn(2, 3, size, size)
            assert converted(x).shape == plain(x).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_blur_with_filter_size_one_keeps_the_original_sampling_grid(name: str) -> None:
    # With no low-pass, every subsampler keeps exactly the pixels the strided layer computed,
    # so the converted network must reproduce the original outputs: this pins down the placement.
    plain = BACKBONES[name]().eval()
    converted = antialias(plain, "blur", filter_size=1, stem_conv=True).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "build",
    [lambda: torchvision.models.resnet50(), lambda: timm.create_model("resnet50", pretrained=False)],
    ids=["torchvision_resnet50", "timm_resnet50"],
)
def test_full_resnet50_round_trips_weights_and_keeps_outputs_with_filter_size_one(build) -> None:
    torch.manual_seed(0)
    plain = build().eval()
    converted = antialias(plain, "blur", filter_size=1, stem_conv=True).eval()
    assert strided_layers(converted) == []
    assert converted.state_dict().keys() == plain.state_dict().keys()
    converted.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(converted.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = plain(x), converted(x)
    assert out.shape == expected.shape == (1, 1000)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_placement_in_a_torchvision_basic_block() -> None:
    block = antialias(torchvision.models.resnet18(), "aps", filter_size=3).layer2[0]
    assert block.conv1.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    lowpass, leader = block.conv2.down
    assert isinstance(lowpass, BlurPool2d) and lowpass.stride == 1 and lowpass.channels == 128
    assert isinstance(leader, APS2d)
    shortcut_lowpass, follower = block.downsample[0].down
    assert shortcut_lowpass.channels == 64 and isinstance(follower, APS2dFollower)
    assert follower.leader is leader


@pytest.mark.parametrize("depth", [20, 32])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize(("method", "filter_size"), [("blur", 3), ("blur", 5), ("aps", 1), ("aps", 3)])
def test_cifar_resnet_conversion_equals_building_it_antialiased(
    depth: int, padding_mode: str, method: str, filter_size: int
) -> None:
    plain = cifar_resnet(depth, padding_mode=padding_mode)
    converted = antialias(plain, method, filter_size).eval()
    built = cifar_resnet(depth, downsample=method, filter_size=filter_size, padding_mode=padding_mode).eval()
    built.load_state_dict(plain.state_dict(), strict=True)
    assert repr(converted) == repr(built)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), built(x))


def test_aps_conversion_with_circular_padding_is_invariant_to_circular_shifts() -> None:
    # Checks the main path / shortcut pairing of a converted torchvision ResNet: any block whose
    # shortcut kept a different component than its main path would break this for odd shifts.
    model = antialias(torchvision.models.resnet18(num_classes=10), "aps", circular_padding=True).eval()
    images = torch.randn(2, 3, 64, 64)
    shifts = [(0, 1), (1, 0), (1, 1), (3, 7), (17, 30), (31, 63)]
    with torch.no_grad():
        reference = model(images)
        logits = model(torch.cat([torch.roll(images, s, (2, 3)) for s in shifts])).view(len(shifts), 2, 10)
    assert (logits - reference).abs().max() <= 1e-5 * reference.abs().max()
    blurred = antialias(torchvision.models.resnet18(num_classes=10), "blur", circular_padding=True).eval()
    with torch.no_grad():
        change = (blurred(torch.roll(images, (1, 1), (2, 3))) - blurred(images)).abs().max()
        assert change > 1e-3 * blurred(images).abs().max()


def test_stem_conv_placement() -> None:
    kept = antialias(torchvision.models.resnet18(), "blur")
    assert kept.conv1.stride == (2, 2)
    assert [type(m).__name__ for m in kept.maxpool] == ["MaxPool2d", "BlurPool2d"]
    converted = antialias(torchvision.models.resnet18(), "blur", stem_conv=True)
    assert converted.conv1.stride == (1, 1)
    assert [type(m).__name__ for m in converted.maxpool] == ["BlurPool2d", "MaxPool2d", "BlurPool2d"]
    assert antialias(torchvision.models.resnet18(), "aps").conv1.stride == (1, 1)


def test_inplace() -> None:
    model = torchvision.models.resnet18()
    assert antialias(model, "aps", inplace=True) is model
    assert strided_layers(model) == []
    copy = torchvision.models.resnet18()
    assert antialias(copy) is not copy and strided_layers(copy) != []


def test_already_converted_models_are_left_as_they_are() -> None:
    once = antialias(torchvision.models.resnet18(), "blur")
    assert repr(antialias(once, "blur")) == repr(once)


def test_unknown_architecture_lists_the_strided_layers_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, stride=(1, 2)))
    before = repr(model)
    with pytest.raises(ValueError) as info:
        antialias(model, inplace=True)
    message = str(info.value)
    assert "cannot convert these strided layers of Sequential" in message
    assert "0 (Conv2d, stride=(2, 2))" in message and "2 (AvgPool2d, stride=2)" in message
    assert "3 (Conv2d, stride=(1, 2))" in message
    assert repr(model) == before


def test_unsupported_resnet_variants_are_reported() -> None:
    # timm's "d" variants have a deep stem and average-pool shortcuts.
    with pytest.raises(ValueError, match=r"conv1\.0 \(Conv2d.*layer2\.0\.downsample\.0 \(AvgPool2d"):
        antialias(timm.create_model("resnet18d"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "median"}, ValueError, "^antialias: method must be one of .* got 'median'$"),
        ({"filter_size": 0}, ValueError, r"^antialias: filter_size must be an int in \[1, 7\], got 0$"),
        ({"filter_size": "3"}, TypeError, r"^antialias: filter_size must be an int in \[1, 7\], got str '3'$"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        antialias(cifar_resnet(20), **kwargs)
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        antialias("resnet18")


@pytest.mark.shared_data
def test_pretrained_resnet20_still_runs_after_blur_conversion(cifar_resnet_weights_dir: Path) -> None:
    plain = load_cifar_resnet(cifar_resnet_weights_dir / "resnet20-12fca82f.th").eval()
    converted = antialias(plain, "blur").eval()
    converted.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out = converted(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    # Accuracy before/after on the CIFAR-10 test set is measured in docs/models.md (not asserted here).
