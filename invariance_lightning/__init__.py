"""invariance-lightning: measure and fix the shift/scale (in)variance of image classifiers.

The torch-only layer (transforms, metrics) is imported eagerly; names from the Lightning layer
(callbacks, ...) are imported on first use, so ``import invariance_lightning`` stays light.
"""

from importlib import import_module
from typing import Any

from invariance_lightning.metrics import TransformConsistency, evaluate_invariance, transform_consistency
from invariance_lightning.transforms import ScaleSequence, ShiftSequence, TransformSequence, sequence_preset

__version__ = "0.1.0"

_LAZY = {
    "InvarianceMonitor": "invariance_lightning.callbacks",
    "InvarianceReport": "invariance_lightning.callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'invariance_lightning' has no attribute {name!r}")


__all__ = [
    "InvarianceMonitor",
    "InvarianceReport",
    "ScaleSequence",
    "ShiftSequence",
    "TransformConsistency",
    "TransformSequence",
    "evaluate_invariance",
    "sequence_preset",
    "transform_consistency",
]
