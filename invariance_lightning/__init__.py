"""invariance-lightning: measure and fix the shift/scale (in)variance of image classifiers."""

from invariance_lightning.metrics import TransformConsistency, evaluate_invariance, transform_consistency
from invariance_lightning.transforms import ScaleSequence, ShiftSequence, TransformSequence

__version__ = "0.1.0"

__all__ = [
    "ScaleSequence",
    "ShiftSequence",
    "TransformConsistency",
    "TransformSequence",
    "evaluate_invariance",
    "transform_consistency",
]
