"""Deprecated: moved to :mod:`invariance_lightning.metrics.published` (it needs no Lightning).

Old imports (``from invariance_lightning.lightning.published import evaluate_protocols``) still work, with a
``DeprecationWarning``; import from ``invariance_lightning.metrics.published`` instead.
"""

from invariance_lightning.deprecation import deprecated_aliases
from invariance_lightning.metrics import published

__getattr__ = deprecated_aliases(__name__, globals(), {name: f"published.{name}" for name in published.__all__})
