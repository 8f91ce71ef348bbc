"""Fixed, seeded subsets of un-augmented images drawn from a Trainer's data, and batch unpacking."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

#: How to find images and targets in a batch: None (a tensor, or a tuple/list ``(images, targets, ...)``),
#: one key/index for the images (no targets), or an ``(images_key, targets_key)`` pair.
BatchKey = Hashable | tuple[Hashable, Hashable] | None

SPLITS = ("train", "val", "test")


@dataclass
class ImageSubset:
    """Images (uint8 or float, NCHW), their targets (or None) and their indices in the split."""

    images: Tensor
    targets: Tensor | None
    indices: list[int]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> ImageSubset:
        targets = None if self.targets is None else self.targets.to(device)
        return ImageSubset(self.images.to(device), targets, self.indices)

    def shard(self, rank: int, world_size: int) -> ImageSubset:
        """Every ``world_size``-th image from ``rank``: disjoint shards, no padding, possibly empty."""
        targets = None if self.targets is None else self.targets[rank::world_size]
        return ImageSubset(self.images[rank::world_size], targets, self.indices[rank::world_size])


def unpack_batch(batch: Any, batch_key: BatchKey = None) -> tuple[Tensor, Tensor | None]:
    """``(images, targets or None)`` from a batch, as described by ``batch_key``."""
    if batch_key is None:
        if isinstance(batch, Tensor):
            return batch, None
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            return batch[0], targets
        raise TypeError(
            f"cannot find images in a batch of type {type(batch).__name__}; pass batch_key "
            "(e.g. batch_key=('image', 'label') for dict batches)"
        )
    image_key, target_key = batch_key if isinstance(batch_key, tuple) else (batch_key, None)
    try:
        images = batch[image_key]
        targets = None if target_key is None else batch[target_key]
    except (KeyError, IndexError, TypeError) as error:
        raise KeyError(f"batch_key={batch_key!r} does not match the batch ({type(batch).__name__}): {error}") from None
    if not isinstance(images, Tensor):
        raise TypeError(f"batch[{image_key!r}] must be an images tensor, got {type(images).__name__}")
    return images, targets


def _loader_source(trainer: pl.Trainer, split: str) -> Any:
    """The data source Lightning itself uses for ``split`` (datamodule, module hooks or loaders given to fit)."""
    loops = {"train": trainer.fit_loop, "val": trainer.fit_loop.epoch_loop.val_loop, "test": trainer.test_loop}
    return loops[split]._data_source  # Lightning has no public accessor for an un-iterated loader source


def _split_loader(trainer: pl.Trainer, split: str) -> DataLoader | None:
    source = _loader_source(trainer, split)
    if source.instance is None or not source.is_defined():
        return None
    loader = source.dataloader()
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    return loader


def _without_train_augmentation(train_set: Dataset, val_set: Dataset | None) -> Dataset:
    """A shallow copy of a torchvision-style train dataset using the validation dataset's ``transform``."""
    if val_set is None or not hasattr(train_set, "transform") or not hasattr(val_set, "transform"):
        return train_set
    plain = copy.copy(train_set)
    plain.transform = val_set.transform
    return plain


def _draw_indices(size: int, num_samples: int | None, seed: int, split: str) -> list[int]:
    if size == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to measure invariance on")
    if num_samples is None:
        return list(range(size))
    if num_samples > size:
        warnings.warn(
            f"num_samples={num_samples} exceeds the {size} images of the {split!r} split; using all of them",
            stacklevel=3,
        )
        num_samples = size
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:num_samples].tolist())


def draw_subset(
    trainer: pl.Trainer, split: str, num_samples: int | None, seed: int, batch_key: BatchKey = None
) -> ImageSubset:
    """Draw ``num_samples`` images (None: all) of ``split`` by ``seed``, without training augmentation.

    Sources, in order: a datamodule method ``split_arrays(split) -> (images, targets)`` (the
    project's data modules provide it); else the split's dataset, indexed directly, where a
    torchvision-style train dataset is read with the validation dataset's ``transform``; else the
    first images an iterable dataset yields.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "split_arrays"):
        images, targets = datamodule.split_arrays(split)
        indices = _draw_indices(images.shape[0], num_samples, seed, split)
        chosen = torch.as_tensor(indices)
        return ImageSubset(images[chosen], None if targets is None else targets[chosen], indices)

    loader = _split_loader(trainer, split)
    if loader is None:
        raise ValueError(
            f"the Trainer has no {split} data to draw the invariance subset from; give the Trainer a "
            f"{split}_dataloader (or a datamodule that has one), or drop {split!r} from splits"
        )
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return _first_images(loader, split, num_samples, batch_key)
    if split == "train":
        val_loader = _split_loader(trainer, "val")
        dataset = _without_train_augmentation(dataset, None if val_loader is None else val_loader.dataset)
    indices = _draw_indices(len(dataset), num_samples, seed, split)
    images, targets = unpack_batch(default_collate([dataset[i] for i in indices]), batch_key)
    return ImageSubset(images, targets, indices)


def _first_images(loader: DataLoader, split: str, num_samples: int | None, batch_key: BatchKey) -> ImageSubset:
    warnings.warn(
        f"the {split!r} dataset cannot be indexed; the invariance subset is the first images it yields "
        "(fixed only if the loader is deterministic)",
        stacklevel=3,
    )
    images, targets = [], []
    for batch in loader:
        batch_images, batch_targets = unpack_batch(batch, batch_key)
        images.append(batch_images)
        targets.append(batch_targets)
        if num_samples is not None and sum(len(x) for x in images) >= num_samples:
            break
    if not images:
        raise ValueError(f"the {split!r} split is empty: nothing to measure invariance on")
    all_images = torch.cat(images)[:num_samples]
    has_targets = all(t is not None for t in targets)
    all_targets = torch.cat(targets)[:num_samples] if has_targets else None
    return ImageSubset(all_images, all_targets, list(range(len(all_images))))


def check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of split names."""
    if isinstance(splits, str):
        splits = (splits,)
    if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names from {list(SPLITS)}, got {list(splits)!r}")
    return tuple(splits)
