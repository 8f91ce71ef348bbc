"""validation.py: one style for every check, TypeError for a wrong type, ValueError for a wrong value."""

from __future__ import annotations

import pytest
import torch

from invariance_lightning.transforms import ShiftSequence
from invariance_lightning.transforms.normalization import as_float_images, check_normalize
from invariance_lightning.validation import (
    NonFiniteLogitsError,
    check_feature_map,
    check_finite_logits,
    check_fits,
    check_images,
    check_scores,
    check_targets,
    check_unit_range,
)

IMAGES = torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize(
    ("value", "options", "error", "got"),
    [
        ([[0.0]], {}, TypeError, "got list"),
        (IMAGES.to(torch.uint8), {}, TypeError, r"got shape \(2, 3, 8, 8\) and dtype torch.uint8"),
        (IMAGES.to(torch.int32), {"uint8": True}, TypeError, r"got shape \(2, 3, 8, 8\) and dtype torch.int32"),
        (IMAGES[0], {}, ValueError, r"got shape \(3, 8, 8\)"),
        (IMAGES, {"channels": 1}, ValueError, r"got shape \(2, 3, 8, 8\)"),
        (IMAGES, {"size": (8, 9)}, ValueError, r"got shape \(2, 3, 8, 8\)"),
    ],
)
def test_check_images_rejects_with_the_one_style(value, options, error, got):
    with pytest.raises(error, match=rf"^Owner: images must .*, {got}"):
        check_images("Owner", "images", value, **options)


def test_check_images_returns_a_good_batch():
    assert check_images("Owner", "images", IMAGES, channels=3, size=(8, 8)) is IMAGES
    uint8 = IMAGES.to(torch.uint8)
    assert check_images("Owner", "images", uint8, uint8=True) is uint8


def test_unit_range_targets_scores_and_fits():
    check_unit_range("Owner", "images", IMAGES)
    check_unit_range("Owner", "images", (IMAGES * 300).to(torch.uint8))
    with pytest.raises(ValueError, match=r"^Owner: images must be uint8 or floats in \[0, 1\] .* got values in \[-1, "):
        check_unit_range("Owner", "images", IMAGES * 0 - 1)
    assert check_targets("Owner", "targets", None, 2) is None
    with pytest.raises(TypeError, match=r"^Owner: targets must be None or a tensor .* got list$"):
        check_targets("Owner", "targets", [0, 1], 2)
    with pytest.raises(ValueError, match=r"^Owner: targets must be None or of shape \(N,\) = \(2,\), got shape \(3,\)"):
        check_targets("Owner", "targets", torch.zeros(3), 2)
    with pytest.raises(TypeError, match=r"^Owner: outputs must be a floating-point \(N, C\), .* got dict$"):
        check_scores("Owner", "outputs", {}, 2)
    with pytest.raises(ValueError, match=r"^Owner: outputs must be .* for N=2 inputs, got shape \(3, 5\)"):
        check_scores("Owner", "outputs", torch.zeros(3, 5), 2)
    check_fits("Owner", "the sequence", ShiftSequence(max_shift=2), 8, 8)
    with pytest.raises(ValueError, match="^Owner: the sequence must fit the 2x2 images, got .*do not fit 2x2 images"):
        check_fits("Owner", "the sequence", ShiftSequence(max_shift=2), 2, 2)


def test_nonfinite_logits_raise_their_own_value_error():
    logits = torch.zeros(2, 3)
    assert check_finite_logits("Owner", "logits", logits) is logits
    logits[0, 1] = float("inf")
    with pytest.raises(NonFiniteLogitsError, match="^Owner: logits must be finite, got 1 NaN or infinite values$"):
        check_finite_logits("Owner", "logits", logits)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.5, TypeError),
        ((0.5, "a"), TypeError),
        (([0.5], [None]), TypeError),
        (([0.5], [0.1, 0.2]), ValueError),
        (([0.5], [0.0]), ValueError),
        (([], []), ValueError),
    ],
)
def test_check_normalize(value, error):
    with pytest.raises(error, match=r"^Owner: normalize must be a \(mean, std\) pair"):
        check_normalize("Owner", "normalize", value)


def test_check_normalize_gives_plain_float_tuples():
    assert check_normalize("Owner", "normalize", None) is None
    assert check_normalize("Owner", "normalize", ([1], (2,))) == ((1.0,), (2.0,))


def test_as_float_images_scales_uint8_only():
    assert torch.equal(as_float_images(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)), torch.ones(1, 1, 1, 1))
    assert as_float_images(IMAGES) is IMAGES
    with pytest.raises(TypeError, match="^BatchAugmentation: images must be a uint8 or floating-point"):
        as_float_images(IMAGES.to(torch.int64), "BatchAugmentation")


def test_check_feature_map_is_a_deprecated_alias_of_check_images():
    with pytest.warns(DeprecationWarning, match="use check_images"):
        check_feature_map("BlurPool2d", IMAGES, 3)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="^BlurPool2d: input must have C=4 channels"):
        check_feature_map("BlurPool2d", IMAGES, 4)
