"""Load a trained classifier for evaluation: our Lightning checkpoints or the classic pretrained CIFAR ResNets."""

from __future__ import annotations

from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import NamedTuple

import torch
from torch import nn

from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.data import CIFAR_STATS
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, load_cifar_resnet
from invariance_lightning.metrics.evaluate import Normalization


_LEGACY_NORMALIZATION = CIFAR_STATS["cifar10"]


class LoadedClassifier(NamedTuple):
    """A model in eval mode, the ``(mean, std)`` its inputs need, and a short name for reports."""

    model: nn.Module
    normalize: Normalization
    name: str


def load_classifier(path: str | Path, map_location: str = "cpu") -> LoadedClassifier:
    """Load ``path``: a Lightning ``.ckpt`` of :class:`ImageClassifier`, or CIFAR ResNet weights (``.th``/``.pt``/``.pth``).

    Checkpoints are read with ``weights_only=True``. An ``ImageClassifier`` checkpoint carries the
    normalization it trained with (its ``mean``/``std`` or its datamodule's); for checkpoints saved
    before that was stored, CIFAR-10's statistics are assumed. Pretrained CIFAR ResNet weights use the
    normalization they were trained with (ImageNet statistics).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: give a Lightning .ckpt or CIFAR ResNet weights (.th/.pt)")
    if path.suffix == ".ckpt":
        # a datamodule given a pathlib folder saves it among its hyperparameters; paths are safe to unpickle
        with torch.serialization.safe_globals([PurePosixPath, PureWindowsPath, PosixPath, WindowsPath]):
            model = ImageClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
        normalization = model.input_normalization or _LEGACY_NORMALIZATION
        return LoadedClassifier(model.eval(), normalization, path.stem)
    model = load_cifar_resnet(path)
    return LoadedClassifier(model.eval(), tuple(CIFAR_RESNET_NORMALIZE), path.stem.split("-")[0])
