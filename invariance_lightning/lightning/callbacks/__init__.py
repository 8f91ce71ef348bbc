"""Lightning callbacks that measure invariance during training (monitor) and for final reports."""

from invariance_lightning.lightning.callbacks.monitor import InvarianceMonitor
from invariance_lightning.lightning.callbacks.report import InvarianceReport

__all__ = ["InvarianceMonitor", "InvarianceReport"]
