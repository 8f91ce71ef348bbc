"""Consistency metrics (torchmetrics ``Metric`` and functional twin) and ``evaluate_invariance``."""

from invariance_lightning.metrics.consistency import TransformConsistency
from invariance_lightning.metrics.evaluate import evaluate_invariance, evaluate_sequences, iter_frame_logits
from invariance_lightning.metrics.functional import transform_consistency
from invariance_lightning.metrics.outputs import OutputKey
from invariance_lightning.metrics.protocols import PROTOCOLS, ShiftProtocol, evaluate_protocol, protocol_counts

__all__ = [
    "PROTOCOLS",
    "OutputKey",
    "ShiftProtocol",
    "TransformConsistency",
    "evaluate_invariance",
    "evaluate_protocol",
    "evaluate_sequences",
    "iter_frame_logits",
    "protocol_counts",
    "transform_consistency",
]
