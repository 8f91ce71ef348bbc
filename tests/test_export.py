"""Every downsampling method exports (torch.export, both ONNX exporters) with dynamic batch and image size, and the
ONNX files agree with PyTorch in onnxruntime on sizes that make intermediate maps odd."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from torch import nn

from invariance_lightning.export import ExportMismatchError, compare_onnx, constant_padding, export_onnx, export_program
from invariance_lightning.models import antialias, cifar_resnet
from invariance_lightning.nn import BlurPool2d

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

# ResNet-8: 32 -> 16 -> 8, and 36 -> 18 -> 9 (odd), 44x40 -> 22x20 -> 11x10 (odd rows)
CIFAR_SIZES = [(2, 32, 32), (3, 36, 36), (1, 44, 40)]
CIFAR_METHODS = [("stride", "zeros"), ("blur", "zeros"), ("aps", "zeros"), ("aps", "circular"), ("lps", "circular")]


def tiny_cifar(method: str, padding: str) -> nn.Module:
    torch.manual_seed(0)
    return cifar_resnet(8, downsample=method, padding_mode=padding).eval()  # type: ignore[arg-type]


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that the logits are not all near zero."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize(("method", "padding"), CIFAR_METHODS)
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_cifar_networks_export_to_onnx_and_match_onnxruntime(tmp_path: Path, method: str, padding: str, dynamo: bool):
    model = trained_like(tiny_cifar(method, padding))
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=dynamo)
    assert compare_onnx(path, model, CIFAR_SIZES) <= 1e-4
    assert model.training is False  # export_onnx restored the flags it found


@pytest.mark.parametrize("method", ["aps", "lps"])
def test_torch_export_runs_odd_sizes_it_was_not_traced_with(method: str):
    model = trained_like(tiny_cifar(method, "zeros"))
    program = export_program(model).module()
    for batch, height, width in CIFAR_SIZES:
        images = torch.rand(batch, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(program(images), model(images), rtol=1e-4, atol=1e-4)


def test_the_alias_free_network_exports_for_sizes_divisible_by_its_stride(tmp_path: Path):
    model = trained_like(tiny_cifar("afc", "circular"))
    sizes = [(2, 32, 32), (1, 40, 36)]  # 40 -> 20 -> 10, 36 -> 18 -> 9
    for dynamo in (True, False):
        path = export_onnx(model, tmp_path / f"afc_{dynamo}.onnx", size_multiple=4, dynamo=dynamo)
        assert compare_onnx(path, model, sizes) <= 1e-4
        # 34x34 gives 17x17 maps, which the network refuses; so does the exported graph, rather than returning
        # logits (it did before its downsampling layers carried the check as a reshape)
        with pytest.raises(ValueError, match="divisible by stride=2"):
            model(torch.rand(1, 3, 34, 34))
        session = onnxruntime.InferenceSession(str(path))
        for height, width in ((34, 34), (33, 36)):
            with pytest.raises(Exception, match="Reshape"):
                session.run(None, {"images": torch.rand(1, 3, height, width).numpy()})
    program = export_program(model, size_multiple=4).module()
    images = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(program(images), model(images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["blur", "aps", "lps"])
def test_a_converted_torchvision_resnet_exports_and_handles_odd_maps(tmp_path: Path, method: str):
    torch.manual_seed(0)
    model = antialias(torchvision.models.resnet18(num_classes=10), method).eval()
    path = export_onnx(model, tmp_path / "resnet18.onnx", example_size=(3, 64, 64), dynamo=False)
    # 72x72 makes the last stages 9x9 and 5x5: the case that failed when the even-size path was baked in
    assert compare_onnx(path, model, [(2, 64, 64), (1, 72, 72)]) <= 1e-4


def test_an_alias_free_torchvision_resnet_exports_for_multiples_of_its_total_stride(tmp_path: Path):
    torch.manual_seed(0)
    model = antialias(torchvision.models.resnet18(num_classes=10), "afc", circular_padding=True).eval()
    for module in model.modules():  # squares of squares: with batch-norm gains of 1 (and the statistics of a new
        if isinstance(module, nn.BatchNorm2d):  # network) its logits reach 4e3, with 0.2 they stay below 1
            nn.init.constant_(module.weight, 0.2)
    path = export_onnx(model, tmp_path / "resnet18_afc.onnx", example_size=(3, 64, 64), size_multiple=32)
    assert compare_onnx(path, model, [(2, 64, 64), (1, 96, 64)]) <= 1e-4  # 96 px: a 3x2 last stage


def test_a_converted_timm_resnet_exports_with_both_exporters(tmp_path: Path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = antialias(timm.create_model("resnet18", num_classes=10), "aps").eval()
    for module in model.modules():  # timm zero-initializes each block's last BN scale: give the blocks a say
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    for dynamo in (True, False):
        path = export_onnx(model, tmp_path / f"timm_{dynamo}.onnx", example_size=(3, 64, 64), dynamo=dynamo)
        assert compare_onnx(path, model, [(2, 64, 64), (1, 72, 72)]) <= 1e-4


def test_a_lightning_image_classifier_exports_with_its_normalization(tmp_path: Path):
    from invariance_lightning.lightning.module import ImageClassifier

    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    model = ImageClassifier("cifar_resnet8", num_classes=10, downsample="lps", padding_mode="circular", **stats)
    trained_like(model.backbone)
    model.train()
    path = export_onnx(model, tmp_path / "classifier.onnx", dynamo=False)
    assert compare_onnx(path, model, [(2, 32, 32), (1, 36, 36)]) <= 1e-4  # inputs in [0, 1]: normalized inside
    assert model.training and model.backbone.training  # back in the mode the user left it in


def test_the_check_names_a_mismatch(tmp_path: Path):
    model = trained_like(tiny_cifar("blur", "zeros"))
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    with torch.no_grad():
        model.linear.bias += 1.0  # the PyTorch model moves on, the file does not
    with pytest.raises(ExportMismatchError, match=r"model\.onnx: logits of a 1x3x32x32 batch differ .* by 1 "):
        compare_onnx(path, model, [(1, 32, 32)])


def test_constant_padding_removes_every_reflect_pad_and_changes_only_border_pixels(tmp_path: Path):
    model = trained_like(tiny_cifar("blur", "zeros"))
    assert any(m.padding_mode == "reflect" for m in model.modules() if isinstance(m, BlurPool2d))
    constant = constant_padding(model)
    assert not any(m.padding_mode in ("reflect", "replicate") for m in constant.modules() if hasattr(m, "padding_mode"))
    assert any(m.padding_mode == "reflect" for m in model.modules() if isinstance(m, BlurPool2d))  # a copy
    path = export_onnx(constant, tmp_path / "constant.onnx", dynamo=False)
    pad_modes = {
        attribute.s.decode()
        for node in onnx.load(str(path)).graph.node
        if node.op_type == "Pad"
        for attribute in node.attribute
        if attribute.name == "mode"
    }
    assert "reflect" not in pad_modes
    reflecting = export_onnx(model, tmp_path / "reflect.onnx", dynamo=False)
    assert any(
        attribute.name == "mode" and attribute.s == b"reflect"
        for node in onnx.load(str(reflecting)).graph.node
        for attribute in node.attribute
    )
    layer = BlurPool2d(2, 3, 2, "reflect")
    x = torch.rand(1, 2, 8, 8)
    blurred, zero_padded = layer(x), constant_padding(layer)(x)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # output pixels whose window stays inside
    torch.testing.assert_close(zero_padded[interior], blurred[interior])
    assert not np.allclose(zero_padded[..., 0, :].numpy(), blurred[..., 0, :].numpy())


def test_bad_arguments_are_named(tmp_path: Path):
    model = tiny_cifar("stride", "zeros")
    with pytest.raises(ValueError, match="export_onnx: size_multiple must be"):
        export_onnx(model, tmp_path / "m.onnx", size_multiple=0)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="export_onnx: atol must be"):
        export_onnx(model, tmp_path / "m.onnx", atol=-1.0)
