"""Consistency metrics (torchmetrics ``Metric`` and functional twin) and ``evaluate_invariance``."""

from invariance_lightning.metrics.consistency import TransformConsistency
from invariance_lightning.metrics.evaluate import evaluate_invariance, iter_frame_logits
from invariance_lightning.metrics.functional import transform_consistency

__all__ = ["TransformConsistency", "evaluate_invariance", "iter_frame_logits", "transform_consistency"]
