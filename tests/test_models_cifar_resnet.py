"""cifar_resnet and load_cifar_resnet: architecture, pretrained accuracy, checkpoint formats, APS invariance."""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest
import torch

from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, cifar_resnet, load_cifar_resnet

RESNET20 = "resnet20-12fca82f.th"
RESNET56 = "resnet56-4bfd9763.th"


def cifar10_test_subset(cifar10_dir: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed shuffled subset (the file is sorted by class), normalized like the pretrained models' inputs."""
    data = np.load(cifar10_dir / "cifar10_test.npz")
    order = torch.randperm(len(data["labels"]), generator=torch.Generator().manual_seed(0))[:count]
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2)[order].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_RESNET_NORMALIZE)
    return (images - mean) / std, torch.from_numpy(data["labels"])[order]


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in zip(images.split(500), labels.split(500)))
    return 100 * correct / len(labels)


@pytest.mark.parametrize(("depth", "params"), [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_parameter_counts_match_he_et_al(depth: int, params: float) -> None:
    # He et al. (2016), Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters.
    count = sum(p.numel() for p in cifar_resnet(depth).parameters())
    assert round(count / 1e6, 2 if depth < 110 else 1) == params / 1e6


def test_layer_names_and_shapes() -> None:
    model = cifar_resnet(20, num_classes=7)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert keys[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert {k.rsplit(".", 2)[0] for k in keys if k.startswith("layer")} == {
        f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)
    }
    assert model.layer3[2].conv2.weight.shape == (64, 64, 3, 3)
    assert model.linear.weight.shape == (7, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("downsample", ["blur", "aps"])
def test_all_downsampling_variants_share_the_state_dict_layout(downsample: str) -> None:
    plain = cifar_resnet(32)
    other = cifar_resnet(32, downsample=downsample, padding_mode="circular")
    assert other.state_dict().keys() == plain.state_dict().keys()
    other.load_state_dict(plain.state_dict(), strict=True)


def test_blur_with_filter_size_one_equals_the_strided_network() -> None:
    # conv at stride 1 -> BN -> ReLU -> keep every 2nd pixel == strided conv -> BN -> ReLU.
    plain = cifar_resnet(20).eval()
    blur1 = cifar_resnet(20, downsample="blur", filter_size=1).eval()
    blur1.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(blur1(x), plain(x), rtol=1e-4, atol=1e-4)


def test_aps_with_circular_padding_is_invariant_to_every_circular_shift() -> None:
    model = cifar_resnet(20, downsample="aps", padding_mode="circular").eval()
    image = torch.randn(1, 3, 32, 32)
    shifts = [(dy, dx) for dy in range(32) for dx in range(32)]
    with torch.no_grad():
        reference = model(image)
        logits = torch.cat(
            [model(torch.cat([torch.roll(image, s, (2, 3)) for s in shifts[i : i + 256]])) for i in range(0, 1024, 256)]
        )
    assert torch.equal(logits.argmax(1), reference.argmax(1).expand(len(shifts)))
    # Convs accumulate in a position-dependent order, so float32 outputs agree to rounding, not bit for bit:
    # 1e-5 relative to the logits' scale (random-init logits are O(10)).
    scale = reference.abs().max()
    assert (logits - reference).abs().max() <= 1e-5 * scale


def test_strided_and_blurred_networks_are_not_exactly_invariant() -> None:
    images = torch.randn(2, 3, 32, 32)
    for downsample in ("stride", "blur"):
        model = cifar_resnet(20, downsample=downsample, padding_mode="circular").eval()
        with torch.no_grad():
            reference = model(images)
            change = max((model(torch.roll(images, s, (2, 3))) - reference).abs().max() for s in [(0, 1), (1, 1)])
        assert change > 1e-3 * reference.abs().max()


def test_load_accepts_plain_prefixed_and_lightning_state_dicts(tmp_path: Path) -> None:
    model = cifar_resnet(32, num_classes=5).eval()
    state = model.state_dict()
    formats = {
        "plain.pt": state,
        "dataparallel.th": {"best_prec1": 90.0, "state_dict": {f"module.{k}": v for k, v in state.items()}},
        "lightning.ckpt": {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}},
        "old.th": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    x = torch.randn(2, 3, 32, 32)
    for name, checkpoint in formats.items():
        torch.save(checkpoint, tmp_path / name)
        loaded = load_cifar_resnet(tmp_path / name).eval()
        assert len(loaded.layer1) == 5 and loaded.linear.out_features == 5, name
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), name
    blurred = load_cifar_resnet(tmp_path / "plain.pt", downsample="blur", filter_size=5)
    assert blurred.layer2[0].down.filter_size == 5


def test_a_lightning_checkpoint_is_rebuilt_with_the_architecture_it_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(8, downsample="blur", filter_size=5, padding_mode="circular").eval()
    hyper_parameters = {"backbone": "cifar_resnet8", "downsample": "blur", "filter_size": 5, "padding_mode": "circular"}
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters}, tmp_path / "blur.ckpt")
    loaded = load_cifar_resnet(tmp_path / "blur.ckpt").eval()  # the keys alone would make a strided network
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match=r"downsample='stride' was given but the weights in .* have downsample='blur'"):
        load_cifar_resnet(tmp_path / "blur.ckpt", downsample="stride")


def test_load_refuses_files_that_need_arbitrary_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": cifar_resnet(20).state_dict(), "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="refusing to load .*pickled.pt.*weights_only=True"):
        load_cifar_resnet(path)


def test_load_rejects_inconsistent_arguments_and_foreign_checkpoints(tmp_path: Path) -> None:
    torch.save(cifar_resnet(20).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ValueError, match="depth=56 was given but the weights .* have depth=20"):
        load_cifar_resnet(tmp_path / "r20.pt", depth=56)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected exactly one CIFAR ResNet"):
        load_cifar_resnet(tmp_path / "other.pt")


def test_weights_load_into_an_antialiased_network_of_the_same_depth(tmp_path: Path) -> None:
    saved = cifar_resnet(20).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}}, tmp_path / "r20.th")
    blurred = load_cifar_resnet(tmp_path / "r20.th", model=cifar_resnet(20, downsample="blur").eval())
    assert all(torch.equal(blurred.state_dict()[k], v) for k, v in saved.state_dict().items())
    # the same weights behind BlurPool compute something else; a blur of size 1 is the strided network again
    x = torch.randn(2, 3, 32, 32)
    identity = load_cifar_resnet(tmp_path / "r20.th", model=cifar_resnet(20, downsample="blur", filter_size=1).eval())
    with torch.no_grad():
        assert torch.allclose(identity(x), saved(x), atol=1e-5)
        assert not torch.allclose(blurred(x), saved(x), atol=1e-3)
    with pytest.raises(ValueError, match="r20.th.* do not fit this CifarResNet"):
        load_cifar_resnet(tmp_path / "r20.th", model=cifar_resnet(32))
    with pytest.raises(TypeError, match="`model` must be a CifarResNet"):
        load_cifar_resnet(tmp_path / "r20.th", model=torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"architecture arguments \['downsample'\] cannot be combined with `model`"):
        load_cifar_resnet(tmp_path / "r20.th", model=cifar_resnet(20), downsample="blur")


def test_the_old_loading_functions_still_work_and_warn(tmp_path: Path) -> None:
    from invariance_lightning.models import cifar_resnet_state_dict, load_cifar_resnet_weights

    saved = cifar_resnet(20).eval()
    torch.save({"state_dict": saved.state_dict()}, tmp_path / "r20.th")
    with pytest.warns(DeprecationWarning, match=r"use load_cifar_resnet\(path, model=model\)"):
        loaded = load_cifar_resnet_weights(cifar_resnet(20), tmp_path / "r20.th")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.state_dict().items())
    with pytest.warns(DeprecationWarning, match="cifar_resnet_state_dict is deprecated"):
        state = cifar_resnet_state_dict({"state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}})
    assert state.keys() == saved.state_dict().keys()


@pytest.mark.shared_data
def test_a_released_model_is_loaded_by_name_from_the_shared_folder(cifar_resnet_weights_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(cifar_resnet_weights_dir.parents[1]))
    by_name = load_cifar_resnet("resnet20", download=False)
    by_file = load_cifar_resnet(cifar_resnet_weights_dir / RESNET20)
    assert all(torch.equal(by_name.state_dict()[k], v) for k, v in by_file.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 21}, r"^cifar_resnet: depth must be one of \(8, 20, 32, 44, 56, 110\), got 21$"),
        ({"downsample": "max"}, "^cifar_resnet: downsample must be one of .* got 'max'$"),
        ({"padding_mode": "reflect"}, "^cifar_resnet: padding_mode must be one of .* got 'reflect'$"),
        ({"downsample": "blur", "filter_size": 9}, r"^cifar_resnet: filter_size must be an int in \[1, 7\], got 9$"),
        ({"num_classes": 0}, "^cifar_resnet: num_classes must be an int >= 1, got 0$"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cifar_resnet(**kwargs)
    with pytest.raises(TypeError, match="^cifar_resnet: depth must be an int >= 1, got float 20.0$"):
        cifar_resnet(depth=20.0)


@pytest.mark.shared_data
def test_pretrained_resnet20_accuracy(cifar_resnet_weights_dir: Path, cifar10_dir: Path) -> None:
    # Full 10k test set: 91.73% (docs/models.md); a fixed 2,000-image subset must be within 2 points.
    model = load_cifar_resnet(cifar_resnet_weights_dir / RESNET20)
    assert abs(accuracy(model, *cifar10_test_subset(cifar10_dir, 2000)) - 91.73) <= 2.0


@pytest.mark.shared_data
@pytest.mark.slow
def test_pretrained_resnet56_accuracy(cifar_resnet_weights_dir: Path, cifar10_dir: Path) -> None:
    # Full 10k test set: 93.39% (docs/models.md).
    model = load_cifar_resnet(cifar_resnet_weights_dir / RESNET56)
    assert abs(accuracy(model, *cifar10_test_subset(cifar10_dir, 1000)) - 93.39) <= 2.0
