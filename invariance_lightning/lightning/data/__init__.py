"""Lightning datamodules serving uint8 ``(N, 3, H, W)`` image batches (Lightning layer).

``CIFAR_STATS`` and ``IMAGENET_STATS`` are defined in :mod:`invariance_lightning.transforms.normalization` (torch-only)
and re-exported here next to the datamodules that use them.
"""

from invariance_lightning.lightning.data.base import SPLITS, ImageClassificationDataModule, holdout_split
from invariance_lightning.lightning.data.cifar import CIFAR_NUM_CLASSES, DATA_DIR_ENV, CIFARDataModule, read_cifar_npz
from invariance_lightning.lightning.data.folder import (
    IMAGE_EXTENSIONS,
    EncodedBatch,
    ImageFileDataset,
    ImageFolderDataModule,
    decode_encoded_batch,
)
from invariance_lightning.lightning.data.loader import TensorBatchLoader, TensorImageDataset, epoch_sampler
from invariance_lightning.transforms.normalization import CIFAR_STATS, IMAGENET_STATS

__all__ = [
    "CIFAR_NUM_CLASSES",
    "CIFAR_STATS",
    "DATA_DIR_ENV",
    "IMAGENET_STATS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "CIFARDataModule",
    "EncodedBatch",
    "ImageClassificationDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "TensorBatchLoader",
    "TensorImageDataset",
    "decode_encoded_batch",
    "epoch_sampler",
    "holdout_split",
    "read_cifar_npz",
]
