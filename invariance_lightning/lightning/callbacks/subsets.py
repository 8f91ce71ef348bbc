"""Un-augmented images of a Trainer's data: streamed per process in batches, or drawn into fixed subsets."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

from invariance_lightning._compat import loop_data_source
from invariance_lightning.lightning.data.base import SPLITS
from invariance_lightning.lightning.data.loader import TensorBatchLoader, TensorImageDataset
from invariance_lightning.transforms.normalization import Normalization
from invariance_lightning.transforms.pipeline import (
    find_attribute,
    find_normalization,
    reads_randomly,
    transforms_in,
    with_transform,
)
from invariance_lightning.validation import check_choice

#: How to find images and targets in a batch: None (a tensor, or a tuple/list ``(images, targets, ...)``),
#: one key/index for the images (no targets), or an ``(images_key, targets_key)`` pair.
BatchKey = Hashable | tuple[Hashable, Hashable] | None


@dataclass(frozen=True)
class PipelineFacts:
    """What the data pipeline behind a split does to its images, as far as the dataset tells.

    ``normalization``: the ``Normalize`` found in the dataset's transforms (None: none found);
    ``reads_randomly``: reading an image twice gave different data (None: not checked, e.g. an iterable
    dataset); ``classes``: the dataset's ``classes`` attribute (torchvision's datasets have one), or None.
    """

    normalization: Normalization | None = None
    reads_randomly: bool | None = False
    classes: list[str] | None = None


@dataclass
class ImageSubset:
    """Images (uint8 or float, NCHW), their targets (or None), their indices in the split, and their pipeline."""

    images: Tensor
    targets: Tensor | None
    indices: list[int]
    facts: PipelineFacts = PipelineFacts()

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> ImageSubset:
        targets = None if self.targets is None else self.targets.to(device)
        return ImageSubset(self.images.to(device), targets, self.indices, self.facts)

    def shard(self, rank: int, world_size: int) -> ImageSubset:
        """Every ``world_size``-th image from ``rank``: disjoint shards, no padding, possibly empty."""
        targets = None if self.targets is None else self.targets[rank::world_size]
        return ImageSubset(self.images[rank::world_size], targets, self.indices[rank::world_size], self.facts)


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
    return loop_data_source(loops[split])


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
    """The train dataset tree with every ``transform`` replaced by the validation tree's one ``transform``.

    Unchanged when the validation data has no transform, several different ones, or none to replace: then
    :func:`~invariance_lightning.transforms.pipeline.reads_randomly` tells whether augmentation is left.
    """
    plain = transforms_in(val_set) if val_set is not None else []
    if len(plain) != 1 or not transforms_in(train_set):
        return train_set
    return with_transform(train_set, plain[0])


def _indexable(loader: Any) -> tuple[Dataset | None, Callable[[list[Any]], Any]]:
    """The map-style dataset behind ``loader`` and how the loader collates its items (None: not indexable)."""
    if isinstance(loader, TensorBatchLoader):  # the CIFAR fast path: batches cut from two tensors
        return TensorImageDataset(loader.images, loader.labels), default_collate
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return None, default_collate
    return dataset, getattr(loader, "collate_fn", None) or default_collate


def draw_indices(size: int, num_samples: int | None, seed: int, split: str, limit: int | None = None) -> list[int]:
    """``num_samples`` indices drawn by ``seed`` (None: all), among the first ``limit`` (None: all ``size``): the
    images of a split the callbacks measure, which any process (or a user) can draw again from the same arguments."""
    if size == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to measure invariance on")
    limited = limit is not None and limit < size
    size = min(size, limit) if limit is not None else size
    if num_samples is None:
        return list(range(size))
    if num_samples > size:
        which = (
            f"the first {size} images of the {split!r} split (the Trainer's limit)"
            if limited
            else (f"the {size} images of the {split!r} split")
        )
        rank_zero_warn(f"num_samples={num_samples} exceeds {which}; using all of them")
        num_samples = size
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:num_samples].tolist())


class SplitStream:
    """One process's disjoint share of a split (all of it, or a seeded subset), read ``batch_size`` images at a time.

    A map-style dataset (the loader's ``dataset``; for :class:`TensorBatchLoader` its tensors;
    ``dataset`` if given) is indexed directly: the images are ``indices`` (sorted; ``num_samples`` of
    them drawn by ``seed``, or all, among the first ``limit`` if given) and this process reads
    ``indices[rank::world_size]``, so shares are disjoint, unpadded and together hold every image
    once. Items are collated by the loader's ``collate_fn`` and batches pass through ``transfer``
    (e.g. Lightning's ``transfer_batch_to_device``) before ``batch_key`` picks images and targets.

    Random augmentation is kept out where the dataset allows: ``plain_transform`` replaces every
    ``transform`` in the dataset tree (through ``Subset``, ``ConcatDataset`` and other wrappers);
    without it a training split is read with the ``transform`` (and collate function) of
    ``plain_loader``'s dataset (the validation loader's). ``facts`` says what is left: the
    ``Normalize`` in the transforms, whether the first image reads differently twice, and the
    dataset's ``classes``.

    Otherwise (an iterable dataset) every process reads the loader from the start until
    ``num_samples`` images (or ``limit``, or the end) and keeps every ``world_size``-th image, with a
    warning: the images are "the first ones it yields", fixed only if the loader is deterministic.

    Iterating yields ``(images, targets or None)``; memory holds one batch, never the split.
    ``num_images`` is the number of images over all processes (for an iterable dataset: None until
    it has been iterated).
    """

    def __init__(
        self,
        loader: Any,
        split: str,
        num_samples: int | None,
        seed: int,
        *,
        batch_size: int,
        batch_key: BatchKey = None,
        transfer: Callable[[Any], Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        plain_loader: Any = None,
        plain_transform: Callable[..., Any] | None = None,
        dataset: Dataset | None = None,
        limit: int | None = None,
    ) -> None:
        self.loader = loader
        self.split = split
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.batch_key = batch_key
        self.transfer = transfer or (lambda batch: batch)
        self.rank, self.world_size = rank, world_size
        self.limit = limit
        self.dataset, self.collate_fn = _indexable(loader)
        if dataset is not None:
            self.dataset = dataset
        elif self.dataset is not None and plain_transform is not None:
            self.dataset = with_transform(self.dataset, plain_transform)
        elif self.dataset is not None and split == "train":
            plain_dataset, plain_collate = _indexable(plain_loader)
            if plain_dataset is not None:
                self.dataset = _without_train_augmentation(self.dataset, plain_dataset)
                self.collate_fn = plain_collate
        self.indices: list[int] | None = None
        self.num_images: int | None = None
        described = self.dataset if self.dataset is not None else getattr(loader, "dataset", None)
        classes = find_attribute(described, "classes")
        if self.dataset is None:
            rank_zero_warn(
                f"the {split!r} dataset cannot be indexed; the invariance images are the first ones it yields "
                "(fixed only if the loader is deterministic)"
            )
            self.facts = PipelineFacts(find_normalization(described), None, _names(classes))
            return
        size = len(self.dataset)  # type: ignore[arg-type]  # _indexable keeps only datasets with a __len__
        self.indices = draw_indices(size, num_samples, seed, split, limit)
        self.num_images = len(self.indices)
        randomly = reads_randomly(self.dataset, self.indices[0])
        self.facts = PipelineFacts(find_normalization(self.dataset), randomly, _names(classes))

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        return unpack_batch(self.transfer(batch), self.batch_key)

    def probe(self) -> tuple[Tensor, Tensor | None]:
        """The first (at most two) images of the split and their targets: the same on every process."""
        if self.indices is not None:
            assert self.dataset is not None  # indices are drawn from a dataset only
            return self._unpack(self.collate_fn([self.dataset[i] for i in self.indices[:2]]))
        for batch in self.loader:
            images, targets = self._unpack(batch)
            return images[:2], None if targets is None else targets[:2]
        raise ValueError(f"the {self.split!r} split is empty: nothing to measure invariance on")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        if self.indices is not None:
            assert self.dataset is not None  # indices are drawn from a dataset only
            share = Subset(self.dataset, self.indices[self.rank :: self.world_size])
            # its own generator: iterating a DataLoader draws a worker seed, which must not consume the global RNG
            reader = DataLoader(
                share,
                batch_size=self.batch_size,
                collate_fn=self.collate_fn,
                num_workers=getattr(self.loader, "num_workers", 0),
                generator=torch.Generator(),
            )
            for batch in reader:
                yield self._unpack(batch)
            return
        position = 0
        wanted = min((n for n in (self.num_samples, self.limit) if n is not None), default=None)
        for batch in self.loader:
            images, targets = self._unpack(batch)
            if wanted is not None:
                images = images[: wanted - position]
                targets = None if targets is None else targets[: len(images)]
            mine = slice((self.rank - position) % self.world_size, None, self.world_size)
            yield images[mine], None if targets is None else targets[mine]
            position += len(images)
            if wanted is not None and position >= wanted:
                break
        self.num_images = position


def _names(classes: Any) -> list[str] | None:
    """Class names as strings (a torchvision dataset's ``classes`` list), or None."""
    return None if classes is None or isinstance(classes, str) else [str(name) for name in classes]


def split_stream(
    trainer: pl.Trainer,
    split: str,
    num_samples: int | None,
    seed: int,
    *,
    batch_size: int,
    batch_key: BatchKey = None,
    transfer: Callable[[Any], Any] | None = None,
    sharded: bool = True,
    plain_transform: Callable[..., Any] | None = None,
    dataset: Dataset | None = None,
    limit: int | None = None,
) -> SplitStream:
    """A :class:`SplitStream` over the data Lightning itself uses for ``split`` (or over ``dataset``, collated as
    Lightning's loader for ``split`` would); ``sharded``: this process's share."""
    check_choice("split_stream", "split", split, SPLITS)
    loader = _split_loader(trainer, split)
    if loader is None and dataset is None:
        raise ValueError(
            f"the Trainer has no {split} data to draw the invariance images from; give the Trainer a "
            f"{split}_dataloader (or a datamodule that has one), or drop {split!r} from splits"
        )
    return SplitStream(
        loader,
        split,
        num_samples,
        seed,
        batch_size=batch_size,
        batch_key=batch_key,
        transfer=transfer,
        rank=trainer.global_rank if sharded else 0,
        world_size=trainer.world_size if sharded else 1,
        plain_loader=_split_loader(trainer, "val") if split == "train" else None,
        plain_transform=plain_transform,
        dataset=dataset,
        limit=limit,
    )


def images_within_limit(trainer: pl.Trainer, split: str) -> int | None:
    """How many images of ``split`` the Trainer's own loop reads under its ``limit_{split}_batches`` (which
    ``fast_dev_run`` sets too), over all processes; None when the limit covers the whole split or cannot be told.

    An int limit is batches per process; a float is a fraction of the loader's batches, as Lightning counts them.
    """
    limit = {
        "train": trainer.limit_train_batches,
        "val": trainer.limit_val_batches,
        "test": trainer.limit_test_batches,
    }[split]
    if isinstance(limit, float) and limit >= 1.0:
        return None
    loader = _split_loader(trainer, split)
    batch_size = getattr(loader, "batch_size", None)
    if not batch_size:
        return None
    if isinstance(limit, int):
        return limit * batch_size * trainer.world_size
    try:
        return int(len(loader) * limit) * batch_size  # type: ignore[arg-type]  # not None: it has a batch_size
    except TypeError:  # a loader without a length
        return None


def draw_subset(
    trainer: pl.Trainer,
    split: str,
    num_samples: int | None,
    seed: int,
    batch_key: BatchKey = None,
    *,
    batch_size: int = 256,
    transfer: Callable[[Any], Any] | None = None,
    plain_transform: Callable[..., Any] | None = None,
    dataset: Dataset | None = None,
) -> ImageSubset:
    """Draw ``num_samples`` images (None: all) of ``split`` by ``seed``, without training augmentation, into memory.

    Sources, in order: ``dataset`` or ``plain_transform`` when given (as :class:`SplitStream` reads them);
    a datamodule method ``split_arrays(split) -> (images, targets)`` (the project's data modules provide it);
    else the split's data as :class:`SplitStream` reads it (whole, on every process), ``batch_size`` images
    at a time.
    """
    check_choice("draw_subset", "split", split, SPLITS)
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by the Trainer's data connector
    overridden = dataset is not None or plain_transform is not None
    if not overridden and datamodule is not None and hasattr(datamodule, "split_arrays"):
        images, targets = datamodule.split_arrays(split)
        indices = draw_indices(images.shape[0], num_samples, seed, split)
        chosen = torch.as_tensor(indices)
        return ImageSubset(images[chosen], None if targets is None else targets[chosen], indices)
    stream = split_stream(
        trainer,
        split,
        num_samples,
        seed,
        batch_size=batch_size,
        batch_key=batch_key,
        transfer=transfer,
        sharded=False,
        plain_transform=plain_transform,
        dataset=dataset,
    )
    batches = [batch for batch in stream if len(batch[0])]
    if not batches:
        raise ValueError(f"the {split!r} split is empty: nothing to measure invariance on")
    images = torch.cat([images for images, _ in batches])
    has_targets = all(targets is not None for _, targets in batches)
    targets = torch.cat([targets for _, targets in batches if targets is not None]) if has_targets else None
    return ImageSubset(images, targets, stream.indices or list(range(len(images))), stream.facts)


def check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of split names."""
    if isinstance(splits, str):
        splits = (splits,)
    if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names from {list(SPLITS)}, got {list(splits)!r}")
    return tuple(splits)
