"""GPU batch augmentation presets and consistency regularization (torch-only building blocks, kornia-based)."""

from invariance_lightning.augment.antialiased_affine import AntialiasedRandomAffine, antialias_sigma
from invariance_lightning.augment.consistency import CONSISTENCY_KINDS, ConsistencyRegularization, consistency_loss
from invariance_lightning.augment.pipeline import BatchAugmentation
from invariance_lightning.augment.presets import AUGMENTATION_PRESETS, build_augmentation, preset_sequence
from invariance_lightning.deprecation import deprecated_aliases

__all__ = [
    "AUGMENTATION_PRESETS",
    "CONSISTENCY_KINDS",
    "AntialiasedRandomAffine",
    "BatchAugmentation",
    "ConsistencyRegularization",
    "antialias_sigma",
    "build_augmentation",
    "consistency_loss",
    "preset_sequence",
]

#: Old names, kept working with a DeprecationWarning.
__getattr__ = deprecated_aliases(__name__, globals(), {"PRESETS": "AUGMENTATION_PRESETS"})
