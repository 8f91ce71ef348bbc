"""Lightning callbacks that measure invariance during training (monitor) and for final reports, and the temperature
schedule of learnable polyphase sampling."""

from invariance_lightning.lightning.callbacks.monitor import InvarianceMonitor
from invariance_lightning.lightning.callbacks.report import InvarianceReport
from invariance_lightning.lightning.callbacks.temperature import GumbelTemperature

__all__ = ["GumbelTemperature", "InvarianceMonitor", "InvarianceReport"]
