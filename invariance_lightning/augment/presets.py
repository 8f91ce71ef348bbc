"""Named augmentation presets, built from kornia augmentations."""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
from kornia.augmentation import ImageSequential

from invariance_lightning.augment.antialiased_affine import AntialiasedRandomAffine
from invariance_lightning.augment.pipeline import BatchAugmentation
from invariance_lightning.deprecation import deprecated_aliases
from invariance_lightning.validation import check_choice, check_size

__all__ = ["AUGMENTATION_PRESETS", "build_augmentation", "preset_sequence"]

#: Names accepted by :func:`preset_sequence` and :func:`build_augmentation`.
AUGMENTATION_PRESETS: tuple[str, ...] = (
    "none",
    "standard",
    "translate",
    "translate-subpixel",
    "scale",
    "translate+scale",
)


def preset_sequence(
    preset: str,
    *,
    image_size: int | Sequence[int],
    max_shift: float = 4,
    scale_range: tuple[float, float] = (0.8, 1.2),
) -> K.AugmentationSequential:
    """The kornia ``AugmentationSequential`` of a named preset, for float images of ``image_size`` (kept).

    - ``none``: identity.
    - ``standard``: the CIFAR recipe, zero-pad by ``max_shift`` (4) pixels, random crop back to ``image_size``, random
      horizontal flip. The crop is a uniform integer translation in ``[-max_shift, max_shift]`` on each axis.
    - ``translate``: the same integer translation, no flip.
    - ``translate-subpixel``: a uniform real translation in ``[-max_shift, max_shift]`` pixels per axis, bilinear.
    - ``scale``: rescaling about the centre by a factor uniform in ``scale_range``, antialiased when shrinking
      (:class:`AntialiasedRandomAffine`); the output keeps ``image_size`` (shrunk content is zero-padded, enlarged
      content cropped).
    - ``translate+scale``: rescaling and a real translation in one warp (after a rescale the pixel grid no longer
      lines up, so an integer translation would mean nothing more than a real one).

    All fills are zeros: black, since normalization comes after augmentation in :class:`BatchAugmentation`.
    """
    check_choice("preset_sequence", "preset", preset, AUGMENTATION_PRESETS)
    height, width = check_size("preset_sequence", "image_size", image_size)
    is_number = isinstance(max_shift, (int, float)) and not isinstance(max_shift, bool)
    if not is_number or not 0 <= max_shift < min(height, width):
        raise ValueError(
            f"preset_sequence: `max_shift` must be a number in [0, {min(height, width)}), got {max_shift!r}"
        )
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"preset_sequence: `scale_range` must be (min, max) with 0 < min <= max, got {scale_range!r}")
    translate = (max_shift / width, max_shift / height)
    if preset in ("standard", "translate"):
        if not float(max_shift).is_integer():
            raise ValueError(f"preset_sequence: preset {preset!r} needs an integer `max_shift`, got {max_shift!r}")
        crop = K.RandomCrop((height, width), padding=int(max_shift))
        flips = [K.RandomHorizontalFlip()] if preset == "standard" else []
        return K.AugmentationSequential(crop, *flips)
    if preset == "translate-subpixel":
        return K.AugmentationSequential(K.RandomAffine(degrees=0.0, translate=translate, p=1.0))
    if preset == "scale":
        return K.AugmentationSequential(AntialiasedRandomAffine(scale=scale_range))
    if preset == "translate+scale":
        return K.AugmentationSequential(AntialiasedRandomAffine(translate=translate, scale=scale_range))
    return K.AugmentationSequential()


def build_augmentation(
    preset: str | ImageSequential = "standard",
    *,
    image_size: int | Sequence[int] | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_shift: float = 4,
    scale_range: tuple[float, float] = (0.8, 1.2),
    seed: int | None = None,
) -> BatchAugmentation:
    """A :class:`BatchAugmentation` for a preset name (see :func:`preset_sequence`) or any kornia sequence.

    ``image_size`` is the ``(H, W)`` (or one int) of the batches it will receive; it is required for named presets
    and may be ``None`` for a custom ``AugmentationSequential``. ``mean``/``std`` normalize after augmentation (and in
    evaluation); ``seed`` is described in :class:`BatchAugmentation`.
    """
    if isinstance(preset, ImageSequential):
        sequence = preset
    else:
        if image_size is None:
            raise ValueError(f"build_augmentation: preset {preset!r} needs `image_size`")
        sequence = preset_sequence(preset, image_size=image_size, max_shift=max_shift, scale_range=scale_range)
    return BatchAugmentation(sequence, image_size=image_size, mean=mean, std=std, seed=seed)


#: Old names, kept working with a DeprecationWarning.
__getattr__ = deprecated_aliases(__name__, globals(), {"PRESETS": "AUGMENTATION_PRESETS"})
