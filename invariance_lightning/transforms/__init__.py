"""Deterministic sequences of geometric transforms (shifts, rescalings) of image batches, and input normalization."""

from invariance_lightning.transforms.base import TransformSequence
from invariance_lightning.transforms.normalization import CIFAR_STATS, IMAGENET_STATS, Normalization, normalize_images
from invariance_lightning.transforms.presets import SEQUENCE_PRESETS, sequence_preset
from invariance_lightning.transforms.scale import ScaleSequence
from invariance_lightning.transforms.shift import ShiftSequence

__all__ = [
    "CIFAR_STATS",
    "IMAGENET_STATS",
    "SEQUENCE_PRESETS",
    "Normalization",
    "ScaleSequence",
    "ShiftSequence",
    "TransformSequence",
    "normalize_images",
    "sequence_preset",
]
