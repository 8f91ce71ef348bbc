"""Augmentation presets and the BatchAugmentation pipeline, checked against direct computations."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from invariance_lightning.augment import (
    AUGMENTATION_PRESETS,
    AntialiasedRandomAffine,
    BatchAugmentation,
    antialias_sigma,
    build_augmentation,
    preset_sequence,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.243, 0.261)


def uint8_images(n: int = 16, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def crop_offsets(original: torch.Tensor, augmented: torch.Tensor, pad: int, flips: bool) -> list[tuple[int, int, bool]]:
    """For each image, the (dx, dy, flipped) of the pad-and-crop that reproduces it exactly (brute force)."""
    padded = F.pad(original, (pad, pad, pad, pad))
    size = original.shape[-1]
    found = []
    for i in range(len(original)):
        matches = [
            (pad - left, pad - top, flip)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            for flip in ((False, True) if flips else (False,))
            if torch.equal(
                augmented[i],
                (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + size, left : left + size]),
            )
        ]
        assert matches, f"image {i} is not a {pad}-px padded crop of its original"
        found.append(matches[0])
    return found


def test_standard_is_padded_crop_plus_flip_and_keeps_shape() -> None:
    images = uint8_images(24)
    aug = build_augmentation("standard", image_size=32, seed=3)
    out = aug(images, train=True)
    assert out.shape == images.shape and out.dtype == torch.float32
    offsets = crop_offsets(images.float() / 255, out, pad=4, flips=True)
    assert all(abs(dx) <= 4 and abs(dy) <= 4 for dx, dy, _ in offsets)
    assert len({(dx, dy) for dx, dy, _ in offsets}) > 10  # offsets really are random
    assert {flip for _, _, flip in offsets} == {False, True}


def test_translate_is_unflipped_integer_shift_of_up_to_max_shift() -> None:
    images = uint8_images(24, size=16)
    out = build_augmentation("translate", image_size=16, max_shift=2, seed=0)(images, train=True)
    offsets = crop_offsets(images.float() / 255, out, pad=2, flips=False)
    assert {dx for dx, _, _ in offsets} == {-2, -1, 0, 1, 2}


def test_translate_subpixel_shifts_a_ramp_by_a_real_amount() -> None:
    # On the ramp I(x, y) = x / 32, a translation by dx leaves I(x - dx) inside: input - output == dx / 32 there.
    ramp = (torch.arange(32.0) / 32).expand(8, 3, 32, 32).contiguous()
    out = build_augmentation("translate-subpixel", image_size=32, max_shift=3, seed=0)(ramp, train=True)
    diff = (ramp - out)[..., 4:-4, 4:-4] * 32  # away from the zero-filled borders
    dx = diff.mean(dim=(1, 2, 3))
    assert torch.allclose(diff, dx[:, None, None, None].expand_as(diff), atol=1e-4)
    assert bool((dx.abs() <= 3).all())
    assert bool(((dx - dx.round()).abs() > 0.01).any())  # not only integer shifts


def test_scale_preset_keeps_size_and_changes_scale() -> None:
    # A centred white square of side 16: a rescale by s makes its area about (16 s)^2.
    square = torch.zeros(32, 1, 32, 32)
    square[..., 8:24, 8:24] = 1
    aug = build_augmentation("scale", image_size=32, scale_range=(0.6, 1.4), seed=0)
    out = aug(square, train=True)
    assert out.shape == square.shape
    side = out.sum(dim=(1, 2, 3)).sqrt()
    assert bool((side > 16 * 0.6 - 0.5).all()) and bool((side < 16 * 1.4 + 0.5).all())
    assert float(side.max() - side.min()) > 4


def test_antialias_sigma_formula() -> None:
    scale = torch.tensor([0.5, 0.8, 1.0, 2.0])
    expected = torch.tensor([(3 / 6) ** 0.5, ((1 / 0.64 - 1) / 6) ** 0.5, 0.0, 0.0])
    assert torch.allclose(antialias_sigma(scale), expected)


def test_antialiased_shrink_matches_interpolate_antialias_and_plain_affine_aliases() -> None:
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = F.interpolate(noise, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    ours = AntialiasedRandomAffine(scale=(0.5, 0.5))(noise)[..., 8:24, 8:24]
    plain = K.RandomAffine(degrees=0, scale=(0.5, 0.5), p=1.0)(noise)[..., 8:24, 8:24]
    # Plain kornia is exactly F.interpolate without antialias (same sampling grid); ours is within 1% of the
    # antialiased reference away from the blur's reflected border (2 output px), ten times closer than plain.
    no_antialias = F.interpolate(noise, size=(16, 16), mode="bilinear", antialias=False, align_corners=False)
    assert torch.allclose(plain, no_antialias, atol=1e-5)
    error_ours = (ours - reference)[..., 2:-2, 2:-2].abs().mean()
    error_plain = (plain - reference)[..., 2:-2, 2:-2].abs().mean()
    assert error_ours < 0.01 and error_ours < error_plain / 10
    # Aliasing shows as excess variance: white noise averaged over 4 px keeps ~1/4 of it; sampling keeps more.
    assert ours.var() < 1.2 * reference.var() < plain.var()


def test_antialiased_affine_blurs_only_the_images_it_shrinks() -> None:
    images = torch.rand(32, 3, 16, 16)
    enlarging = AntialiasedRandomAffine(scale=(1.0, 1.5))
    out = enlarging(images)
    assert enlarging.blur_kernel_size == 1
    assert torch.equal(out, K.RandomAffine(degrees=0, scale=(1.0, 1.5), p=1.0)(images, params=enlarging._params))
    mixed = AntialiasedRandomAffine(scale=(0.5, 2.0))
    out = mixed(images)
    plain = K.RandomAffine(degrees=0, scale=(0.5, 2.0), p=1.0)(images, params=mixed._params)
    enlarged = mixed._params["scale"][:, 0] >= 1
    assert 0 < int(enlarged.sum()) < len(images)
    assert torch.equal(out[enlarged], plain[enlarged])  # the per-image blur is an exact identity for these
    assert not torch.allclose(out[~enlarged], plain[~enlarged])


def test_none_preset_and_eval_only_normalize() -> None:
    images = uint8_images(4)
    expected = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    none = build_augmentation("none", image_size=32, mean=MEAN, std=STD)
    assert torch.allclose(none(images, train=True), expected, atol=1e-6)
    standard = build_augmentation("standard", image_size=32, mean=MEAN, std=STD)
    assert torch.allclose(standard(images, train=False), expected, atol=1e-6)
    standard.eval()  # train=None follows the module's mode
    assert torch.allclose(standard(images), expected, atol=1e-6)


def test_uint8_and_unit_float_inputs_give_the_same_output() -> None:
    images = uint8_images(8)
    aug = build_augmentation("standard", image_size=32, mean=MEAN, std=STD, seed=5)
    from_uint8 = aug(images, train=True, batch_id=(7,))
    from_float = aug(images.double() / 255, train=True, batch_id=(7,))
    assert from_float.dtype == torch.float64
    assert torch.allclose(from_uint8.double(), from_float, atol=1e-6)


@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS[1:])
def test_seeded_presets_are_deterministic_and_leave_global_rng_alone(preset: str) -> None:
    images = uint8_images(8)
    first = build_augmentation(preset, image_size=32, seed=11)
    second = build_augmentation(preset, image_size=32, seed=11)
    torch.manual_seed(0)
    a0, a1 = first(images, train=True), first(images, train=True)
    after_first = torch.rand(3)
    torch.manual_seed(123)  # the global stream does not matter to a seeded module
    b0, b1 = second(images, train=True), second(images, train=True)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, a1)  # successive batches get fresh parameters
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_first)  # seeded calls did not consume the global RNG
    # An explicit batch_id picks the same parameters whatever was called before.
    assert torch.equal(first(images, train=True, batch_id=(1,)), a1)
    assert not torch.equal(build_augmentation(preset, image_size=32, seed=12)(images, train=True), a0)


def test_unseeded_augmentation_follows_global_rng() -> None:
    images = uint8_images(8)
    aug = build_augmentation("standard", image_size=32)
    torch.manual_seed(4)
    a = aug(images, train=True)
    torch.manual_seed(4)
    assert torch.equal(aug(images, train=True), a)


def test_random_parameters_stay_on_cpu_after_moving_the_module() -> None:
    aug = build_augmentation("translate+scale", image_size=32, seed=0).to(torch.float64)
    kornia_modules = [m for m in aug.modules() if isinstance(m, K.RandomAffine)]
    assert kornia_modules and all(m.device == torch.device("cpu") and m.dtype == torch.float32 for m in kornia_modules)


def test_custom_augmentation_sequential() -> None:
    images = uint8_images(4)
    aug = build_augmentation(K.AugmentationSequential(K.RandomVerticalFlip(p=1.0)), image_size=None, mean=MEAN, std=STD)
    expected = build_augmentation("none", image_size=32, mean=MEAN, std=STD)(images.flip(-2))
    assert torch.allclose(aug(images, train=True), expected, atol=1e-6)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"^preset_sequence: preset must be one of \('none', 'standard', 'translate',"):
        build_augmentation("cutout", image_size=32)
    with pytest.raises(ValueError, match="needs `image_size`"):
        build_augmentation("standard", image_size=None)
    with pytest.raises(ValueError, match="integer `max_shift`"):
        build_augmentation("standard", image_size=32, max_shift=1.5)
    with pytest.raises(ValueError, match="max_shift"):
        preset_sequence("translate", image_size=8, max_shift=8)
    with pytest.raises(ValueError, match="scale_range"):
        preset_sequence("scale", image_size=8, scale_range=(1.2, 0.8))
    with pytest.raises(TypeError, match=r"^BatchAugmentation: mean and std must be a \(mean, std\) pair .* None\)$"):
        build_augmentation("none", image_size=32, mean=MEAN)
    with pytest.raises(ValueError, match=r"^BatchAugmentation: mean and std must be .* with std > 0"):
        build_augmentation("none", image_size=32, mean=MEAN, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="^BatchAugmentation: seed must be None or an int >= 0, got -1$"):
        build_augmentation("none", image_size=32, seed=-1)
    with pytest.raises(ValueError, match=r"^preset_sequence: image_size must be a positive int or a \(height, width\)"):
        preset_sequence("translate", image_size=(8, 0))
    with pytest.raises(TypeError, match=r"^BatchAugmentation: image_size must be .* got float 32.0$"):
        BatchAugmentation(image_size=32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AugmentationSequential"):
        BatchAugmentation(torch.nn.Identity())  # type: ignore[arg-type]


def test_bad_images_raise_clear_errors() -> None:
    aug = build_augmentation("standard", image_size=32, mean=MEAN, std=STD)
    with pytest.raises(TypeError, match="^BatchAugmentation: images must be a uint8 or floating-point .* got ndarray$"):
        aug(uint8_images(2).numpy())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        aug(uint8_images(1)[0])
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        aug(uint8_images(2).long())
    with pytest.raises(ValueError, match=r"^BatchAugmentation: images must have C=3 channels \(N, C, H, W\)"):
        aug(uint8_images(2).permute(0, 2, 3, 1))  # NHWC by mistake
    with pytest.raises(ValueError, match=r"\(H, W\) = \(32, 32\)"):
        aug(uint8_images(2, size=28))


def test_the_old_name_of_the_preset_list_still_works_and_warns():
    import invariance_lightning.augment as augment
    from invariance_lightning.augment import presets

    for module in (augment, presets):
        with pytest.warns(DeprecationWarning, match=r"PRESETS is deprecated.*use .*AUGMENTATION_PRESETS"):
            assert module.PRESETS is AUGMENTATION_PRESETS
