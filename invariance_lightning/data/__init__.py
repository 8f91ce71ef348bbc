"""Lightning datamodules serving uint8 ``(N, 3, H, W)`` image batches (Lightning layer)."""

from invariance_lightning.data.base import SPLITS, ImageClassificationDataModule, holdout_split
from invariance_lightning.data.cifar import CIFAR_STATS, DATA_DIR_ENV, CIFARDataModule, read_cifar_npz
from invariance_lightning.data.loader import TensorBatchLoader, TensorImageDataset, epoch_sampler

__all__ = [
    "CIFAR_STATS",
    "DATA_DIR_ENV",
    "SPLITS",
    "CIFARDataModule",
    "ImageClassificationDataModule",
    "TensorBatchLoader",
    "TensorImageDataset",
    "epoch_sampler",
    "holdout_split",
    "read_cifar_npz",
]
