"""invariance-lightning: measure and fix the shift/scale (in)variance of image classifiers.

The torch-only layers (transforms, metrics, diagnostics, nn, models, augment) are imported eagerly; the names of
the Lightning layer (callbacks, datamodules, the classifier, the GPU augmentation mixin, the logger wrapper,
checkpoint loading) are imported on first use, so ``import invariance_lightning`` stays light for plain-PyTorch
users. Type checkers and IDEs see the real types of those names through the ``TYPE_CHECKING`` imports below.
See docs/architecture.md for the layers.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from invariance_lightning.augment import (
    BatchAugmentation,
    ConsistencyRegularization,
    build_augmentation,
    consistency_loss,
)
from invariance_lightning.diagnostics import EquivarianceReport, LayerEquivariance, layer_equivariance
from invariance_lightning.metrics import (
    PROTOCOLS,
    TransformConsistency,
    evaluate_invariance,
    evaluate_protocol,
    evaluate_sequences,
    transform_consistency,
)
from invariance_lightning.models import ShiftAveraging, antialias, build_backbone, cifar_resnet, load_cifar_resnet
from invariance_lightning.nn import APS2d, BlurPool2d
from invariance_lightning.transforms import (
    CIFAR_STATS,
    IMAGENET_STATS,
    Normalization,
    ScaleSequence,
    ShiftSequence,
    TransformSequence,
    sequence_preset,
)

if TYPE_CHECKING:
    from invariance_lightning.lightning.augmentation import GPUAugmentationMixin
    from invariance_lightning.lightning.callbacks import InvarianceMonitor, InvarianceReport
    from invariance_lightning.lightning.checkpoint import load_classifier
    from invariance_lightning.lightning.data import CIFARDataModule, ImageFolderDataModule
    from invariance_lightning.lightning.loggers import FaultTolerantLogger
    from invariance_lightning.lightning.module import ImageClassifier

#: The one place the package version is written; pyproject.toml reads it from here.
__version__ = "0.1.0"

#: Lightning-layer names, imported from their module on first access (keep in step with the imports above).
_LAZY = {
    "GPUAugmentationMixin": "invariance_lightning.lightning.augmentation",
    "InvarianceMonitor": "invariance_lightning.lightning.callbacks",
    "InvarianceReport": "invariance_lightning.lightning.callbacks",
    "load_classifier": "invariance_lightning.lightning.checkpoint",
    "CIFARDataModule": "invariance_lightning.lightning.data",
    "ImageFolderDataModule": "invariance_lightning.lightning.data",
    "FaultTolerantLogger": "invariance_lightning.lightning.loggers",
    "ImageClassifier": "invariance_lightning.lightning.module",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'invariance_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CIFAR_STATS",
    "IMAGENET_STATS",
    "PROTOCOLS",
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
    "Normalization",
    "ScaleSequence",
    "ShiftAveraging",
    "ShiftSequence",
    "TransformConsistency",
    "TransformSequence",
    "antialias",
    "build_augmentation",
    "build_backbone",
    "cifar_resnet",
    "consistency_loss",
    "evaluate_invariance",
    "evaluate_protocol",
    "evaluate_sequences",
    "layer_equivariance",
    "load_cifar_resnet",
    "load_classifier",
    "sequence_preset",
    "transform_consistency",
]
