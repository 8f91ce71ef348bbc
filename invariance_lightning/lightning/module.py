"""``ImageClassifier``: a LightningModule for invariance experiments (any backbone, GPU augmentation, consistency)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from invariance_lightning.augment import ConsistencyRegularization, build_augmentation
from invariance_lightning.lightning.augmentation import GPUAugmentationMixin
from invariance_lightning.models.cifar_resnet import CIFAR_RESNET_NORMALIZE, CifarResNet, load_cifar_resnet
from invariance_lightning.models.factory import build_backbone
from invariance_lightning.models.pretrained import release_name
from invariance_lightning.models.weights import load_backbone_weights
from invariance_lightning.transforms.normalization import Normalization
from invariance_lightning.validation import check_choice

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "none")


class ImageClassifier(GPUAugmentationMixin, pl.LightningModule):
    """Train a classifier on uint8 or float image batches with optional GPU augmentation and antialiasing.

    Batches ``(images, targets)`` are converted to float, augmented (training only, preset
    ``augmentation``) and normalized with ``mean``/``std`` on the device, in
    ``on_after_batch_transfer``; ``forward`` therefore takes normalized float images.
    ``mean``/``std`` default to the datamodule's statistics, read at ``setup``.

    Args:
        backbone: a name for :func:`~invariance_lightning.models.factory.build_backbone`
            (``cifar_resnet20``, ``torchvision:resnet18``, ``timm:resnet18``, ...) or a module.
        num_classes: output classes.
        downsample: ``"stride"`` (plain), ``"blur"`` (BlurPool), ``"aps"`` (adaptive polyphase) or ``"lps"``
            (learnable polyphase; anneal its temperature with ``lightning.callbacks.GumbelTemperature``).
        filter_size: low-pass filter length of the antialiased variants.
        padding_mode: ``"zeros"`` or ``"circular"`` (CIFAR ResNets; torchvision/timm ones with an antialiasing
            ``downsample``).
        augmentation: GPU augmentation preset (``none``, ``standard``, ``translate``,
            ``translate-subpixel``, ``scale``, ``translate+scale``).
        max_shift, scale_range: parameters of the translate/scale presets.
        augmentation_seed: seed of the augmentation draws (None: the global RNG).
        image_size: height/width of the batches (checked by the augmentation).
        mean, std: per-channel normalization, or None to use the datamodule's ``mean``/``std``.
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adamw"``.
        lr, momentum, weight_decay: optimizer settings (``lr`` is the peak with one-cycle).
        schedule: ``"onecycle"``, ``"cosine"`` (per step, to zero) or ``"none"``.
        label_smoothing: cross-entropy label smoothing.
        channels_last: run the backbone in channels-last memory format.
        consistency_weight: weight of the consistency penalty between each image and a random
            shift of it whose vacated border is black (``(0 - mean) / std`` after normalization);
            0 disables it. ``consistency_kind``/``consistency_max_shift`` configure it.
        init_weights: weights to fine-tune from. For a CIFAR ResNet: a weights file (the layouts of
            :func:`~invariance_lightning.models.load_cifar_resnet`) or a released model's name
            (``"resnet20"``, ``"resnet56"``, found by
            :func:`~invariance_lightning.models.pretrained.cifar_resnet_weights`), whose normalization
            then becomes the default ``mean``/``std``; for other backbones: a file with the backbone's state dict
            (:func:`~invariance_lightning.models.load_backbone_weights`; the plain network's weights also fit its
            antialiased ``downsample``). Loaded when ``fit`` starts from scratch, not when it resumes from a
            checkpoint, and never when a checkpoint is loaded for evaluation.
    """

    if TYPE_CHECKING:  # for mypy only: save_hyperparameters() made it an AttributeDict, read by attribute

        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(
        self,
        backbone: str | nn.Module = "cifar_resnet20",
        num_classes: int = 10,
        downsample: str = "stride",
        filter_size: int = 3,
        padding_mode: str = "zeros",
        augmentation: str = "standard",
        max_shift: int = 4,
        scale_range: tuple[float, float] = (0.8, 1.2),
        augmentation_seed: int | None = None,
        image_size: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "onecycle",
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        consistency_weight: float = 0.0,
        consistency_kind: str = "symmetric_kl",
        consistency_max_shift: int = 1,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        check_choice("ImageClassifier", "optimizer", optimizer, OPTIMIZERS)
        check_choice("ImageClassifier", "schedule", schedule, SCHEDULES)
        if (mean is None) != (std is None):
            raise ValueError("ImageClassifier: give both mean and std, or neither (then the datamodule's are used)")
        if isinstance(backbone, nn.Module):
            self.backbone = backbone
        else:
            self.backbone = build_backbone(
                backbone, num_classes, downsample=downsample, filter_size=filter_size, padding_mode=padding_mode
            )
        if init_weights is not None and not isinstance(self.backbone, CifarResNet) and release_name(init_weights):
            raise ValueError(
                f"ImageClassifier: init_weights={init_weights!r} names a released CIFAR ResNet, but the backbone is "
                f"{backbone!r}; give a file with its state dict"
            )
        if init_weights is not None and release_name(init_weights) and mean is None:
            mean, std = CIFAR_RESNET_NORMALIZE  # what the released weights were trained with
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.consistency = self._consistency_regularization()  # rebuilt with the black fill once mean/std are known
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.input_normalization: Normalization | None = None
        if mean is not None and std is not None:
            self._build_augmentation(mean, std)
        self._epoch_started = 0.0
        self._epoch_images = 0
        self._training_seconds: float | None = None

    def _consistency_regularization(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> ConsistencyRegularization:
        hp = self.hparams
        return ConsistencyRegularization(
            hp.consistency_weight, kind=hp.consistency_kind, max_shift=hp.consistency_max_shift, mean=mean, std=std
        )

    def _build_augmentation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        hp = self.hparams
        self.input_normalization = Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.consistency = self._consistency_regularization(*self.input_normalization)
        self.gpu_augmentation = build_augmentation(
            hp.augmentation,
            image_size=hp.image_size,
            mean=self.input_normalization.mean,
            std=self.input_normalization.std,
            max_shift=hp.max_shift,
            scale_range=tuple(hp.scale_range),
            seed=hp.augmentation_seed,
        )

    def setup(self, stage: str) -> None:
        if self.input_normalization is None:
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by the Trainer's data connector
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            if mean is None or std is None:
                raise ValueError(
                    "ImageClassifier needs mean/std: pass them, or use a datamodule with `mean` and `std` attributes"
                )
            self._build_augmentation(mean, std)
            self.gpu_augmentation.to(self.device)

    def forward(self, images: Tensor) -> Tensor:
        """Logits for normalized float images ``(N, C, H, W)``."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    # -- steps ---------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits, penalty = self.consistency(self, images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        self.train_accuracy(logits, targets)
        self._epoch_images += images.shape[0]
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True)
        if self.consistency.weight:
            self.log("train/consistency_penalty", penalty)
        return loss + penalty

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, targets), sync_dist=True)
        accuracy(logits, targets)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_accuracy)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy)

    def on_fit_start(self) -> None:
        # after a resumed run's checkpoint was restored (``trainer.ckpt_path`` set): then the file is not needed
        if self.hparams.init_weights is not None and self.trainer.ckpt_path is None:
            if isinstance(self.backbone, CifarResNet):
                load_cifar_resnet(self.hparams.init_weights, model=self.backbone)
            else:
                load_backbone_weights(self.hparams.init_weights, self.backbone)

    def on_train_epoch_start(self) -> None:
        self._epoch_started, self._epoch_images, self._training_seconds = time.perf_counter(), 0, None

    def on_validation_start(self) -> None:
        if self.trainer.training and self._training_seconds is None:  # validation inside fit: stop the clock
            self._training_seconds = time.perf_counter() - self._epoch_started

    def on_train_epoch_end(self) -> None:
        seconds = self._training_seconds or time.perf_counter() - self._epoch_started
        if self._epoch_images and seconds > 0:
            # per process, training batches only (data loading and augmentation included, validation excluded)
            self.log("train/images_per_second", self._epoch_images / seconds)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the statistics actually used (possibly the datamodule's), so that the checkpoint is usable on its own; as a
        # plain (mean, std) tuple, which torch.load(weights_only=True) reads (it refuses our NamedTuple class)
        normalization = self.input_normalization
        checkpoint["input_normalization"] = None if normalization is None else tuple(normalization)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        normalization = checkpoint.get("input_normalization")
        if normalization is not None and self.input_normalization is None:
            self._build_augmentation(*normalization)

    # -- optimization --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.schedule == "none":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if hp.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=steps)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
