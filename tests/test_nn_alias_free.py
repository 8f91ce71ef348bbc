"""Alias-free layers and the alias-free CIFAR ResNet (``downsample="afc"``): exact equivariance of each block to
integer and half-pixel shifts, and invariance of the network, checked against FFT shifts computed independently."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from invariance_lightning.metrics.protocols import PROTOCOLS, evaluate_protocol
from invariance_lightning.models import antialias, build_backbone, cifar_resnet
from invariance_lightning.nn.alias_free import AliasFreeDownsample, PolynomialActivation, ideal_lowpass, ideal_upsample2
from invariance_lightning.transforms.functional import fourier_shift


def half_pixel(x: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """The protocol's fractional shift: a 1-D FFT shift along x, then along y."""
    return fourier_shift(fourier_shift(x, dx, 0), 0, dy)


def band_limited(*shape: int, seed: int = 0) -> torch.Tensor:
    return ideal_lowpass(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), 1)


def test_the_lowpass_removes_exactly_the_frequencies_at_and_above_the_cutoff():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    spectrum = torch.fft.fft2(ideal_lowpass(x, 2)).abs()
    kept = torch.fft.fftfreq(8, dtype=torch.float64).abs() < 0.25  # bins 0, +-1 of 8
    assert spectrum[..., ~kept, :].max() < 1e-12 and spectrum[..., :, ~kept].max() < 1e-12
    inside = torch.fft.fft2(x)[..., kept, :][..., :, kept]
    assert torch.allclose(torch.fft.fft2(ideal_lowpass(x, 2))[..., kept, :][..., :, kept], inside)


def test_upsampling_keeps_the_samples_and_turns_a_half_pixel_shift_into_a_one_pixel_roll():
    x = band_limited(2, 3, 16, 16)
    fine = ideal_upsample2(x)
    assert fine.shape == (2, 3, 32, 32)
    assert torch.allclose(fine[..., ::2, ::2], x, atol=1e-5)
    assert torch.allclose(torch.roll(fine, (1, 1), dims=(2, 3))[..., ::2, ::2], half_pixel(x, 0.5, 0.5), atol=1e-5)


def spectrum_bins(size: int, highest: int) -> torch.Tensor:
    """Indices of the DFT bins ``-highest..highest`` of a ``size``-point axis."""
    return torch.arange(-highest, highest + 1) % size


def fourier_polynomial(x: torch.Tensor, c0: float, c1: float, c2: float) -> torch.Tensor:
    """The alias-free polynomial by FFTs, independently of the layer's matrices: the spectrum below Nyquist
    zero-padded to a grid twice as fine, the polynomial there, then the bins below a quarter cycle per fine pixel
    back on the coarse grid (which is the fine grid's every other sample)."""
    size = x.shape[-1]
    coarse, fine = spectrum_bins(size, size // 2 - 1), spectrum_bins(2 * size, size // 2 - 1)
    padded = torch.zeros(*x.shape[:-2], 2 * size, 2 * size, dtype=torch.complex128)
    padded[..., fine[:, None], fine] = torch.fft.fft2(x)[..., coarse[:, None], coarse]
    up = torch.fft.ifft2(padded).real * 4
    spectrum = torch.fft.fft2(c0 + c1 * up + c2 * up * up)
    cropped = torch.zeros(*x.shape, dtype=torch.complex128)
    cropped[..., coarse[:, None], coarse] = spectrum[..., fine[:, None], fine]
    return torch.fft.ifft2(cropped).real / 4


@pytest.mark.parametrize("coefficients", [(0.2, 0.5, 0.2), (-0.2, 1.3, -0.7), (0.0, 0.0, 2.0)])
def test_the_polynomial_activation_is_the_polynomial_between_ideal_resamplings(coefficients):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = fourier_polynomial(x, *coefficients)
    assert torch.allclose(PolynomialActivation(*coefficients)(x), expected, atol=1e-10)
    as_float = PolynomialActivation(*coefficients)(x.float().contiguous(memory_format=torch.channels_last))
    assert as_float.dtype == torch.float32 and as_float.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(as_float.double(), expected, atol=1e-4)


def test_the_default_coefficients_are_the_least_squares_fit_of_relu_under_a_standard_normal_input():
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    powers = torch.stack([torch.ones_like(x), x, x * x])  # the normal equations E[p_i p_j] c = E[p_i relu]
    gram = torch.trapezoid(powers[:, None] * powers[None] * density, x)
    moments = torch.trapezoid(powers * torch.relu(x) * density, x)
    fit = torch.linalg.solve(gram, moments)
    default = PolynomialActivation()
    assert torch.allclose(fit, torch.tensor([default.c0, default.c1, default.c2], dtype=torch.float64), atol=1e-6)


def test_the_polynomial_activation_refuses_a_linear_polynomial():
    with pytest.raises(ValueError, match=r"^PolynomialActivation: c2 must be a nonzero number \(c2 = 0 makes"):
        PolynomialActivation(0.1, 0.5, 0.0)


def test_the_polynomial_activation_commutes_with_integer_and_half_pixel_shifts():
    x, activation = band_limited(2, 3, 16, 16), PolynomialActivation()
    out = activation(x)
    rolled = activation(torch.roll(x, (3, -2), dims=(2, 3)))
    assert torch.allclose(rolled, torch.roll(out, (3, -2), dims=(2, 3)), atol=1e-5)
    assert torch.allclose(activation(half_pixel(x, -0.5, 1.5)), half_pixel(out, -0.5, 1.5), atol=1e-5)
    # ... which a pointwise square on the 16x16 grid does not: its spectrum folds over
    squared = x * x
    assert not torch.allclose(half_pixel(x, 0.5, 0.5) ** 2, half_pixel(squared, 0.5, 0.5), atol=1e-3)


def test_downsampling_turns_a_one_pixel_input_shift_into_a_half_pixel_output_shift():
    x, down = band_limited(2, 3, 16, 16), AliasFreeDownsample(2)
    assert torch.allclose(down(torch.roll(x, (1, 1), dims=(2, 3))), half_pixel(down(x), 0.5, 0.5), atol=1e-5)
    with pytest.raises(
        ValueError, match="^AliasFreeDownsample: input must have sizes divisible by stride=2, got 15x16$"
    ):
        down(torch.randn(1, 1, 15, 16))


def random_smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(count, 3, 4, 4, generator=generator), size=size, mode="bilinear")
    return (coarse + 0.1 * torch.rand(count, 3, size, size, generator=generator)).clamp(0, 1)


def spread_network(downsample: str, images: torch.Tensor) -> torch.nn.Module:
    """A random circular CIFAR ResNet-20 in eval mode with batch-norm statistics of ``images`` and a classifier
    re-centred and scaled on them, so that its predictions differ between the images (a random network's logits
    share a large common part)."""
    torch.manual_seed(0)
    model = cifar_resnet(20, downsample=downsample, padding_mode="circular")
    with torch.no_grad():
        model(images)
        model.eval()
        logits = model(images)
        model.linear.bias -= logits.mean(0)
        model.linear.weight *= 10 / logits.std(0).mean()
        model.linear.bias *= 10 / logits.std(0).mean()
    return model


def test_the_alias_free_network_is_invariant_to_integer_and_half_pixel_shifts_and_the_strided_one_is_not():
    images = random_smooth_images(6, 16, seed=1)
    for downsample, invariant in (("afc", True), ("stride", False)):
        model = spread_network(downsample, images)
        with torch.no_grad():
            logits = model(images)
            shifted = [model(torch.roll(images, (5, -3), dims=(2, 3))), model(half_pixel(images, -2.5, 0.5))]
        scale = logits.abs().max()
        assert all(((s - logits).abs().max() < 1e-4 * scale) == invariant for s in shifted), downsample


def test_on_the_afc_protocol_the_alias_free_network_loses_no_image_to_any_shift():
    images = random_smooth_images(8, 16, seed=2)
    protocol = dataclasses.replace(PROTOCOLS["afc2023_adversarial"], period=8, crop_margin=1)  # 16x16: 104 frames
    results = {}
    for downsample in ("afc", "stride"):
        model = spread_network(downsample, images)
        with torch.no_grad():
            labels = model(images).argmax(1)  # its own predictions: accuracy 1
        assert labels.unique().numel() > 1, "a constant predictor would be trivially invariant"
        results[downsample] = evaluate_protocol(model, images, labels, protocol, seed=0)
    afc, strided = results["afc"], results["stride"]
    assert afc["adversarial_integer"] == afc["adversarial_half_pixel"] == afc["accuracy"] == 1.0
    assert strided["adversarial_integer"] < 1 and strided["adversarial_half_pixel"] < 1


def test_the_alias_free_network_has_the_strided_networks_state_dict_and_the_cifar_doors_build_it():
    assert cifar_resnet(20, downsample="afc").state_dict().keys() == cifar_resnet(20).state_dict().keys()
    backbone = build_backbone("cifar_resnet20", 10, downsample="afc", padding_mode="circular")
    assert any(isinstance(m, PolynomialActivation) for m in backbone.modules())


def test_the_alias_free_cifar_resnet_trains_at_the_configs_learning_rate():
    # no activation after a block's residual sum: with a square there the stream's values are squared once per block
    # and, on smooth images like these (not on white noise), the loss explodes within these four steps
    torch.manual_seed(0)
    model = cifar_resnet(20, downsample="afc", padding_mode="circular")
    assert not any(isinstance(block.act2, PolynomialActivation) for block in model.modules() if hasattr(block, "act2"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = random_smooth_images(32, 32, seed=0) * 4 - 2, torch.arange(32) % 10  # spread as normalized
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(0 < value < 5 for value in losses), losses


def test_converting_a_cifar_resnet_gives_the_network_built_alias_free():
    torch.manual_seed(0)
    plain = cifar_resnet(8, padding_mode="circular")
    built = cifar_resnet(8, downsample="afc", padding_mode="circular")
    built.load_state_dict(plain.state_dict())
    converted = antialias(plain, "afc").eval()
    images = random_smooth_images(3, 16, seed=3)
    assert torch.equal(converted(images), built.eval()(images))


def imagenet_resnet(library: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if library == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(
            "resnet18", num_classes=10, zero_init_last=False
        )  # else its blocks start as identities
    return torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_alias_free_imagenet_resnets_leave_the_residual_stream_linear(library, block):
    # a block whose main path outputs zero (its last batch norm zeroed) passes an identity shortcut's input unchanged
    # only if no activation follows the residual sum, as in the alias-free CIFAR ResNet
    torch.manual_seed(0)
    if library == "timm":
        timm_resnet = pytest.importorskip("timm.models.resnet")
        network = timm_resnet.ResNet(getattr(timm_resnet, block), [2, 1, 1, 1], num_classes=10)
    else:
        network = torchvision.models.ResNet(getattr(torchvision.models.resnet, block), [2, 1, 1, 1], num_classes=10)
    model = antialias(network, "afc", circular_padding=True).eval()
    second = model.layer1[1]  # an identity shortcut
    last_norm = second.bn3 if block == "Bottleneck" else second.bn2
    torch.nn.init.zeros_(last_norm.weight)
    torch.nn.init.zeros_(last_norm.bias)
    x = torch.randn(2, second.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(second(x), x)
        assert torch.isfinite(model(torch.randn(2, 3, 64, 64))).all()
    assert any(isinstance(m, PolynomialActivation) for m in second.modules())  # inside the block


def spread_classifier(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """``model`` in eval mode with batch-norm statistics of ``images`` and its ``fc`` re-centred and scaled on them
    (as :func:`spread_network`)."""
    with torch.no_grad():
        model(images)
        model.eval()
        logits = model(images)
        scale = 10 / logits.std(0).mean()
        model.fc.bias -= logits.mean(0)
        model.fc.weight *= scale
        model.fc.bias *= scale
    return model


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_an_imagenet_resnet_converted_alias_free_loses_no_image_to_any_shift_and_the_original_does(library):
    images = random_smooth_images(6, 32, seed=4)  # 32 px: the total stride, the smallest size it accepts
    protocol = dataclasses.replace(PROTOCOLS["afc2023_adversarial"], period=6, crop_margin=1)
    original = imagenet_resnet(library)
    converted = antialias(original, "afc", circular_padding=True)
    assert converted.load_state_dict(original.state_dict()) is not None  # the weights still load, strictly
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in converted.modules())
    results = {}
    for name, model in (("converted", converted), ("original", original)):
        spread = spread_classifier(model, images)
        with torch.no_grad():
            labels = spread(images).argmax(1)
        assert labels.unique().numel() > 1, "a constant predictor would be trivially invariant"
        results[name] = evaluate_protocol(spread, images, labels, protocol, seed=0)
    assert results["converted"]["adversarial_integer"] == results["converted"]["adversarial_half_pixel"] == 1.0
    assert results["original"]["adversarial_integer"] < 1 and results["original"]["adversarial_half_pixel"] < 1
    # every frequency, the Nyquist one too; in float64, where "exactly" means to 1e-9
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        exact = converted.double()
        logits = exact(noise)
        shifted = [exact(torch.roll(noise, (7, -3), dims=(2, 3))), exact(half_pixel(noise, 1.5, -0.5))]
    assert all((s - logits).abs().max() < 1e-9 * logits.abs().max() for s in shifted)


def test_the_alias_free_conversion_refuses_what_it_cannot_make_alias_free():
    with pytest.raises(ValueError, match=r"^antialias: method='afc' needs stem_conv=True"):
        antialias(torchvision.models.resnet18(), "afc", stem_conv=False)
    model = torchvision.models.resnet18()
    model.relu = torch.nn.GELU()
    with pytest.raises(ValueError, match=r"has none for the other activations of ResNet: relu \(GELU\)$"):
        antialias(model, "afc")


def test_build_backbone_makes_a_torchvision_resnet_alias_free_with_circular_convs():
    backbone = build_backbone("torchvision:resnet18", 10, downsample="afc", padding_mode="circular")
    assert isinstance(backbone.maxpool, AliasFreeDownsample) and backbone.maxpool.stride == 4
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)]
    assert convs and all(m.padding_mode == "circular" for m in convs)
    with pytest.raises(ValueError, match="needs an antialiasing `downsample`"):
        build_backbone("torchvision:resnet18", 10, padding_mode="circular")
