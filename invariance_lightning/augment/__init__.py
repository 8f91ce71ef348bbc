"""GPU batch augmentation presets and consistency regularization (Lightning layer)."""

from invariance_lightning.augment.antialias import AntialiasedRandomAffine, antialias_sigma
from invariance_lightning.augment.consistency import CONSISTENCY_KINDS, ConsistencyRegularization, consistency_loss
from invariance_lightning.augment.mixin import GPUAugmentationMixin, map_batch_images
from invariance_lightning.augment.pipeline import BatchAugmentation
from invariance_lightning.augment.presets import PRESETS, build_augmentation, preset_sequence

__all__ = [
    "CONSISTENCY_KINDS",
    "PRESETS",
    "AntialiasedRandomAffine",
    "BatchAugmentation",
    "ConsistencyRegularization",
    "GPUAugmentationMixin",
    "antialias_sigma",
    "build_augmentation",
    "consistency_loss",
    "map_batch_images",
    "preset_sequence",
]
