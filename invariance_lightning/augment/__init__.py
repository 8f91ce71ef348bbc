"""GPU batch augmentation presets and consistency regularization (torch-only building blocks, kornia-based)."""

from invariance_lightning.augment.antialiased_affine import AntialiasedRandomAffine, antialias_sigma
from invariance_lightning.augment.consistency import CONSISTENCY_KINDS, ConsistencyRegularization, consistency_loss
from invariance_lightning.augment.pipeline import BatchAugmentation
from invariance_lightning.augment.presets import PRESETS, build_augmentation, preset_sequence

__all__ = [
    "CONSISTENCY_KINDS",
    "PRESETS",
    "AntialiasedRandomAffine",
    "BatchAugmentation",
    "ConsistencyRegularization",
    "antialias_sigma",
    "build_augmentation",
    "consistency_loss",
    "preset_sequence",
]
