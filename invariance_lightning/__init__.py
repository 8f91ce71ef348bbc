"""invariance-lightning: measure and fix the shift/scale (in)variance of image classifiers.

The torch-only layers (transforms, metrics, diagnostics, nn, models) are imported eagerly; names
from the Lightning layer (callbacks, augmentation, data, the classifier) are imported on first use,
so ``import invariance_lightning`` stays light for plain-PyTorch users.
"""

from importlib import import_module
from typing import Any

from invariance_lightning.diagnostics import EquivarianceReport, LayerEquivariance, layer_equivariance
from invariance_lightning.metrics import TransformConsistency, evaluate_invariance, transform_consistency
from invariance_lightning.models import antialias, cifar_resnet, load_cifar_resnet
from invariance_lightning.nn import APS2d, BlurPool2d
from invariance_lightning.transforms import ScaleSequence, ShiftSequence, TransformSequence, sequence_preset

__version__ = "0.1.0"

_LAZY = {
    "InvarianceMonitor": "invariance_lightning.lightning.callbacks",
    "InvarianceReport": "invariance_lightning.lightning.callbacks",
    "BatchAugmentation": "invariance_lightning.augment",
    "ConsistencyRegularization": "invariance_lightning.augment",
    "GPUAugmentationMixin": "invariance_lightning.lightning.augmentation",
    "build_augmentation": "invariance_lightning.augment",
    "consistency_loss": "invariance_lightning.augment",
    "CIFARDataModule": "invariance_lightning.lightning.data",
    "ImageFolderDataModule": "invariance_lightning.lightning.data",
    "ImageClassifier": "invariance_lightning.lightning.module",
    "FaultTolerantLogger": "invariance_lightning.lightning.loggers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'invariance_lightning' has no attribute {name!r}")


__all__ = [
    "APS2d",
    "BatchAugmentation",
    "BlurPool2d",
    "CIFARDataModule",
    "ConsistencyRegularization",
    "EquivarianceReport",
    "FaultTolerantLogger",
    "GPUAugmentationMixin",
    "ImageClassifier",
    "ImageFolderDataModule",
    "InvarianceMonitor",
    "InvarianceReport",
    "LayerEquivariance",
    "ScaleSequence",
    "ShiftSequence",
    "TransformConsistency",
    "TransformSequence",
    "antialias",
    "build_augmentation",
    "cifar_resnet",
    "consistency_loss",
    "evaluate_invariance",
    "layer_equivariance",
    "load_cifar_resnet",
    "sequence_preset",
    "transform_consistency",
]
