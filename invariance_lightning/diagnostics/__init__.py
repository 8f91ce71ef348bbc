"""Per-layer shift-equivariance diagnostics (torch-only): where along a network shift invariance is lost."""

from invariance_lightning.diagnostics.equivariance import (
    EquivarianceReport,
    LayerEquivariance,
    default_layers,
    layer_equivariance,
)

__all__ = ["EquivarianceReport", "LayerEquivariance", "default_layers", "layer_equivariance"]
