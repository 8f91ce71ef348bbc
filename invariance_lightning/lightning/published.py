"""Deprecated: moved to :mod:`invariance_lightning.metrics.published` (it needs no Lightning).

Kept so that old imports (``from invariance_lightning.lightning.published import evaluate_protocols``) still work;
import from ``invariance_lightning.metrics.published`` instead.
"""

from invariance_lightning.metrics.published import ProtocolTotals, check_protocol_names, evaluate_protocols, summarize

__all__ = ["ProtocolTotals", "check_protocol_names", "evaluate_protocols", "summarize"]
