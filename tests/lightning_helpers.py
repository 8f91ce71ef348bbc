"""A tiny LightningModule and data for callback tests (real Trainer runs on CPU, in seconds)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader, Dataset, TensorDataset

NUM_CLASSES = 6


class ClassifierSteps:
    """Cross-entropy training, validation and test steps with SGD: the steps of a LightningModule of either package
    (``lightning.pytorch`` or ``pytorch_lightning``) whose ``forward`` returns logits."""

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = nn.functional.cross_entropy(self(images), targets)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.log("val_loss", nn.functional.cross_entropy(self(images), targets))

    def test_step(self, batch, batch_idx):
        images, targets = batch
        self.log("test_loss", nn.functional.cross_entropy(self(images), targets))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class TinyClassifier(ClassifierSteps, pl.LightningModule):
    """A strided CNN (not shift invariant), so that the metrics have something to measure."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchRecorder(pl.LightningModule):
    """A linear classifier on each uint8 image's mean colour (it converts the batches itself, as the augmentation
    presets would) that records what every step saw: ``seen`` holds ``(stage, dtype, image shape)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(3, num_classes)
        self.seen: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def _loss(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        self.seen.append((stage, images.dtype, tuple(images.shape[1:])))
        return nn.functional.cross_entropy(self.linear(images.float().mean((2, 3)) / 255), labels)

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch, "val"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_data(num_images: int = 40, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, size, size, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    return images, targets


def tiny_loader(num_images: int = 40, seed: int = 0, shuffle: bool = False, batch_size: int = 8) -> DataLoader:
    dataset: Dataset = TensorDataset(*tiny_data(num_images, seed=seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=pl.loggers.CSVLogger(tmp_path, name="csv"),
        num_sanity_val_steps=0,
        deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class LargestImageBatch(TorchDispatchMode):
    """Inside the ``with`` block, the largest N of any (N, C, height, width) tensor an operator creates.

    A stream that holds one batch at a time never creates an image tensor larger than the batch; gathering a
    whole split into memory creates one of the split's size.
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.size = (height, width)
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.ndim == 4 and tuple(value.shape[-2:]) == self.size:
                self.largest = max(self.largest, value.shape[0])
        return out


def train_classifier_checkpoint(data_dir, path, steps: int = 10, val_split: int = 8, batch_size: int = 16):
    """An ``ImageClassifier`` (CIFAR ResNet-20) trained ``steps`` SGD steps (lr 0.05, no augmentation) on the CIFAR
    ``.npz`` files in ``data_dir`` and saved to ``path``: enough for predictions that differ between images and
    shifts (a fresh network predicts one class for every noise image)."""
    from invariance_lightning.lightning.data import CIFARDataModule
    from invariance_lightning.lightning.module import ImageClassifier

    torch.manual_seed(0)
    datamodule = CIFARDataModule(data_dir=data_dir, download=False, val_split=val_split, batch_size=batch_size)
    model = ImageClassifier("cifar_resnet20", augmentation="none", schedule="none", lr=0.05)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path
