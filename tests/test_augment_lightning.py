"""GPUAugmentationMixin in real (tiny, CPU) Lightning runs: training batches augmented, evaluation batches not."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from invariance_lightning.augment import BatchAugmentation, ConsistencyRegularization, build_augmentation
from invariance_lightning.lightning.augmentation import GPUAugmentationMixin, map_batch_images

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
N, SIZE, BATCH = 16, 8, 4


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=g), torch.arange(N) % 2


def make_augmentation() -> BatchAugmentation:
    return build_augmentation("standard", image_size=SIZE, mean=MEAN, std=STD, max_shift=2, seed=7)


def trainer(**kwargs: Any) -> pl.Trainer:
    settings = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**settings, **kwargs})


class Recorder(pl.LightningModule):
    """Records the images each step receives (``key`` names them in dict batches)."""

    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2))
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        images, targets = (batch[self.key], batch["label"]) if self.key else batch
        self.seen[stage].append(images.detach().clone())
        return F.cross_entropy(self.net(images).float(), targets)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class AugmentedRecorder(GPUAugmentationMixin, Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.gpu_augmentation = make_augmentation()


class DictDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class AugmentedDictData(GPUAugmentationMixin, pl.LightningDataModule):
    gpu_augmentation_key = "image"

    def __init__(self) -> None:
        super().__init__()
        self.gpu_augmentation = make_augmentation()
        self.dataset = DictDataset(*make_data())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=BATCH)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=BATCH)


def check_seen(seen: dict[str, list[torch.Tensor]], images: torch.Tensor, dtype: torch.dtype) -> None:
    """Evaluation batches are exactly the normalized images; training batch k is the seeded augmentation (0, k)."""
    reference = make_augmentation()
    batches = images.split(BATCH)
    assert len(seen["val"]) == 1 + 2  # sanity check (batch 0), then validation (batches 0 and 1)
    for k, got in zip((0, 0, 1), seen["val"]):
        assert got.dtype == dtype
        assert torch.equal(got, reference(batches[k], train=False).to(dtype))
    assert len(seen["train"]) == 3
    for k, got in enumerate(seen["train"]):
        assert got.dtype == dtype and got.shape == batches[k].shape
        assert torch.equal(got, reference(batches[k], train=True, batch_id=(0, k)).to(dtype))
        assert not torch.equal(got, reference(batches[k], train=False).to(dtype))  # it was augmented


def test_module_mixin_augments_only_training_batches() -> None:
    images, labels = make_data()
    model = AugmentedRecorder()
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
    trainer().fit(model, loader, loader)
    check_seen(model.seen, images, torch.float32)


def test_datamodule_mixin_with_dict_batches_and_true_half_precision() -> None:
    images, _ = make_data()
    model = Recorder(key="image")
    # With "bf16-true" the model runs in bfloat16: the mixin hands it bfloat16 inputs via the precision plugin.
    trainer(precision="bf16-true").fit(model, datamodule=AugmentedDictData())
    check_seen(model.seen, images, torch.bfloat16)


def test_seeded_sequence_continues_after_resuming_from_a_checkpoint(tmp_path: Path) -> None:
    images, labels = make_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
    settings = dict(limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer(**settings).fit(AugmentedRecorder(), loader)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    resumed = AugmentedRecorder()
    trainer(**{**settings, "max_epochs": 2}).fit(resumed, loader, ckpt_path=checkpoint)
    reference = make_augmentation()
    assert len(resumed.seen["train"]) == 3
    for k, got in enumerate(resumed.seen["train"]):  # the second epoch's batches are training batches 3, 4, 5
        assert torch.equal(got, reference(images.split(BATCH)[k], train=True, batch_id=(0, 3 + k)))


def test_consistency_penalty_in_a_one_line_training_step() -> None:
    class Regularized(AugmentedRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.consistency = ConsistencyRegularization(1.0)
            self.penalties: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            images, targets = batch
            logits, penalty = self.consistency(self.net, images)
            self.penalties.append(float(penalty.detach()))
            return F.cross_entropy(logits, targets) + penalty

    images, labels = make_data()
    model = Regularized()
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
    trainer().fit(model, loader)
    # A linear model on pixels changes its outputs under a shift: the penalty is positive, and finite.
    assert len(model.penalties) == 3 and all(0 < p < float("inf") for p in model.penalties)


def test_mixin_without_augmentation_fails_clearly() -> None:
    class Unset(GPUAugmentationMixin, Recorder):
        pass

    images, labels = make_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
    with pytest.raises(TypeError, match="needs `self.gpu_augmentation`"):
        trainer().fit(Unset(), loader)


def test_map_batch_images_keeps_the_batch_structure() -> None:
    x, y = torch.zeros(2, 3), torch.ones(2)

    def double(t: torch.Tensor) -> torch.Tensor:
        return t + 2

    out_tuple = map_batch_images((x, y), double)
    assert isinstance(out_tuple, tuple) and torch.equal(out_tuple[0], x + 2) and out_tuple[1] is y
    out_list = map_batch_images([x, y], double)
    assert isinstance(out_list, list) and torch.equal(out_list[0], x + 2)
    Pair = namedtuple("Pair", ["images", "targets"])
    out_named = map_batch_images(Pair(x, y), double)
    assert isinstance(out_named, Pair) and torch.equal(out_named.images, x + 2)
    assert torch.equal(map_batch_images(x, double), x + 2)
    out_dict = map_batch_images({"img": x, "label": y}, double, key="img")
    assert torch.equal(out_dict["img"], x + 2) and out_dict["label"] is y
    with pytest.raises(TypeError, match="needs `key`"):
        map_batch_images({"img": x}, double)
    with pytest.raises(TypeError, match="needs a mapping batch"):
        map_batch_images((x, y), double, key="img")
    with pytest.raises(KeyError, match="no key 'image'"):
        map_batch_images({"img": x}, double, key="image")
    with pytest.raises(TypeError, match="non-empty tuple/list"):
        map_batch_images((), double)
