"""Lightning callbacks that measure invariance during training (monitor) and for final reports."""

from invariance_lightning.callbacks.monitor import InvarianceMonitor
from invariance_lightning.callbacks.report import InvarianceReport

__all__ = ["InvarianceMonitor", "InvarianceReport"]
