"""Deterministic sequences of geometric transforms (shifts, rescalings) of image batches."""

from invariance_lightning.transforms.base import TransformSequence
from invariance_lightning.transforms.presets import SEQUENCE_PRESETS, sequence_preset
from invariance_lightning.transforms.scale import ScaleSequence
from invariance_lightning.transforms.shift import ShiftSequence

__all__ = ["SEQUENCE_PRESETS", "ScaleSequence", "ShiftSequence", "TransformSequence", "sequence_preset"]
