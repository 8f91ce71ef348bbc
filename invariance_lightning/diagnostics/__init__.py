"""Per-layer shift-equivariance diagnostics (torch-only): where along a network shift invariance is lost.

Three modules, one job each: :mod:`.equivariance` measures (:func:`layer_equivariance`), :mod:`.capture` chooses
layers and captures their outputs with forward hooks, :mod:`.report` holds and formats the result.
"""

from invariance_lightning.diagnostics.capture import capture_outputs, default_layers
from invariance_lightning.diagnostics.equivariance import EQUIVARIANCE_MODES, layer_equivariance
from invariance_lightning.diagnostics.report import EquivarianceReport, LayerEquivariance

__all__ = [
    "EQUIVARIANCE_MODES",
    "EquivarianceReport",
    "LayerEquivariance",
    "capture_outputs",
    "default_layers",
    "layer_equivariance",
]
