"""What every datamodule of this package offers models and callbacks, and the seeded train/val hold-out.

Batch contract: every loader yields ``(images, labels)`` with ``images`` uint8 ``(N, 3, H, W)`` RGB in ``0..255``
and ``labels`` int64 ``(N,)``. Nothing is converted to float or normalized here: the model side does that on the
device (``BatchAugmentation`` in ``invariance_lightning.augment`` takes uint8 batches, scales them to ``[0, 1]``,
augments when training and normalizes with the datamodule's ``mean``/``std``), so one model works with every
datamodule and loading path.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from invariance_lightning.lightning.data.loader import epoch_sampler
from invariance_lightning.validation import check_choice, check_int, check_optional_int

__all__ = ["SPLITS", "ImageClassificationDataModule", "holdout_split"]

#: Split names accepted by :meth:`ImageClassificationDataModule.split_arrays`.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def holdout_split(num_examples: int, val_split: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(num_examples)`` into ``(train_indices, val_indices)``.

    ``val_split`` is a count (int) or a fraction in ``[0, 1)`` (float) of examples held out for validation, drawn
    uniformly without replacement from a permutation seeded by ``seed``; 0 holds out nothing. Both index tensors
    keep the permutation's order (so a class-sorted source still gives mixed-class validation batches).
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise TypeError(f"`val_split` must be an int count or a float fraction, got {type(val_split).__name__}")
    if isinstance(val_split, float):
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"`val_split` as a fraction must be in [0, 1), got {val_split!r}")
        count = round(val_split * num_examples)
    else:
        count = val_split
    if not 0 <= count < num_examples:
        raise ValueError(
            f"`val_split` must hold out between 0 and {num_examples - 1} of the {num_examples} training examples, "
            f"got {val_split!r}"
        )
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[count:], order[:count]


class ImageClassificationDataModule(pl.LightningDataModule):
    """Base of the package's datamodules: splits ``train``/``val``/``test``, dataset statistics, and
    :meth:`split_arrays` for callbacks that need un-augmented images. See the module docstring for the batches.

    Subclasses set ``mean``/``std`` and implement :attr:`classes`, :attr:`image_size`, :meth:`split_size` and
    :meth:`_gather`. The shared loader settings are validated here.

    Args:
        batch_size: examples per batch (per process under DDP).
        num_workers: ``DataLoader`` worker processes, where a path uses a ``DataLoader``.
        seed: seed of the hold-out, the shuffles and :meth:`split_arrays` subsets.
        drop_last: drop the last, smaller training batch.
        pin_memory: pin ``DataLoader`` batches in host memory; ``None`` pins when training on a CUDA device.
    """

    #: Per-channel mean and standard deviation of the dataset's images in ``[0, 1]``.
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self, *, batch_size: int, num_workers: int, seed: int, drop_last: bool, pin_memory: bool | None
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_int(owner, "batch_size", batch_size, 1)
        check_int(owner, "num_workers", num_workers, 0)
        check_int(owner, "seed", seed, 0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory

    @property
    @abstractmethod
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by label."""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Height and width of the (square) images in batches."""

    @abstractmethod
    def split_size(self, split: str) -> int:
        """Number of examples in ``split`` (after the hold-out and ``train_subset``)."""

    @abstractmethod
    def _gather(self, split: str, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented uint8 ``(n, 3, H, W)`` images and labels of ``split`` at ``indices`` (all if None)."""

    @abstractmethod
    def _loader(self, split: str, train: bool) -> Any:
        """The loader of ``split``, shuffling (and augmenting, where the module does) if ``train``; ``[]`` for an
        empty split, which Lightning skips."""

    def train_dataloader(self) -> Any:
        return self._loader("train", train=True)

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)

    def split_arrays(
        self, split: str, num: int | None = None, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented images of a split as CPU tensors: ``(uint8 (n, 3, H, W), int64 (n,))``.

        The pixels are those of the evaluation batches (no random augmentation). ``num=None`` returns the whole
        split in loader order; an int returns a random subset of that many examples drawn with ``seed`` (default:
        the datamodule's), the same subset for the same seed.
        """
        owner = f"{type(self).__name__}.split_arrays"
        check_choice(owner, "split", split, SPLITS)
        size = self.split_size(split)
        if num is None:
            return self._gather(split, None)
        check_int(f"{owner} (the {split!r} split has {size} examples)", "num", num, 1, size)
        check_optional_int(owner, "seed", seed, 0)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return self._gather(split, torch.randperm(size, generator=generator)[:num])

    def _trainer_device(self) -> torch.device | None:
        """The device the attached trainer trains on, or None without a trainer."""
        return None if self.trainer is None else self.trainer.strategy.root_device

    def _sampler_kwargs(self) -> dict[str, int]:
        """``seed``, ``num_replicas`` and ``rank`` for :func:`epoch_sampler` (one replica without a trainer)."""
        if self.trainer is None:
            return {"seed": self.seed, "num_replicas": 1, "rank": 0}
        return {"seed": self.seed, "num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}

    def _dataloader(
        self, dataset: Dataset[Any], *, train: bool, pin_memory: bool | None = None, collate_fn: Any = None
    ) -> DataLoader[Any]:
        """A worker ``DataLoader`` over ``dataset`` with this module's settings, ordered by :func:`epoch_sampler`
        (shuffled and ``drop_last`` only for training)."""
        device = self._trainer_device()
        if pin_memory is None:
            pin_memory = self.pin_memory
        if pin_memory is None:
            pin_memory = device is not None and device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=epoch_sampler(len(dataset), shuffle=train, **self._sampler_kwargs()),  # type: ignore[arg-type]
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            # seeds the workers' RNGs (random crops in workers), so runs repeat
            generator=torch.Generator().manual_seed(self.seed),
        )
