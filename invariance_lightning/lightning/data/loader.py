"""Batching images that are already held in memory as one tensor: the fast path and its standard twin.

Both paths draw their order from :func:`epoch_sampler`, a :class:`~torch.utils.data.DistributedSampler` made with an
explicit ``num_replicas``/``rank``: for one process it is a seeded shuffle whose permutation depends on
``(seed, epoch)`` only, and under DDP it is the per-rank shard Lightning would otherwise inject. Lightning calls
``set_epoch`` on a loader's ``sampler`` at the start of every epoch, for a ``DataLoader`` and for any other iterable
with a ``sampler`` attribute alike, and leaves a ``DataLoader`` whose sampler is already a ``DistributedSampler``
alone. So for the same seed the fast and the standard path yield the same batches, epoch after epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import cast

import torch
from torch.utils.data import Dataset, DistributedSampler

from invariance_lightning.validation import check_int

__all__ = ["TensorBatchLoader", "TensorImageDataset", "epoch_sampler"]


def epoch_sampler(
    num_examples: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0
) -> DistributedSampler:
    """Indices ``0..num_examples-1`` (this rank's share), reshuffled per epoch from ``seed + epoch`` if ``shuffle``.

    With ``num_replicas > 1`` every rank gets ``ceil(num_examples / num_replicas)`` indices (a few repeated to even
    them out), so all ranks run the same number of batches.
    """
    # DistributedSampler only needs len(dataset); a range stands in for the dataset.
    examples = cast(Dataset, range(num_examples))
    return DistributedSampler(examples, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)


class TensorImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Map-style dataset over an in-memory image tensor ``(N, C, H, W)`` and labels ``(N,)``: item ``i`` is
    ``(images[i], labels[i])``. The standard (``DataLoader``) path; the default collate stacks items into the same
    batches :class:`TensorBatchLoader` cuts directly."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        _check_pair(images, labels, "TensorImageDataset")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class TensorBatchLoader:
    """Iterable of ``(images[idx], labels[idx])`` batches cut by indexing whole tensors: no workers, no per-item
    calls, no collation. The tensors may live on any device; batches come from the same device.

    Order: :func:`epoch_sampler` (``sampler`` attribute). Call :meth:`set_epoch` before each epoch for a new
    permutation (Lightning does this itself); iterating twice without it repeats the order.

    Args:
        images: ``(N, ...)`` tensor, typically uint8 ``(N, 3, H, W)``.
        labels: ``(N,)`` tensor on the same device.
        batch_size: examples per batch.
        shuffle: permute the examples each epoch.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        seed: seed of the permutation (combined with the epoch).
        num_replicas, rank: DDP world size and this process's rank; each rank iterates over its own shard.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        _check_pair(images, labels, "TensorBatchLoader")
        if images.device != labels.device:
            raise ValueError(
                f"TensorBatchLoader: `images` and `labels` must be on the same device, got {images.device} and "
                f"{labels.device}"
            )
        check_int("TensorBatchLoader", "batch_size", batch_size, 1)
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.drop_last = drop_last
        # Lightning reads `batch_sampler` wherever it finds a `sampler`, as on a DataLoader that batches by itself.
        self.batch_sampler = None
        self.sampler = epoch_sampler(images.shape[0], shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long).to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield _take(self.images, index), _take(self.labels, index)


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``tensor``, on its device."""
    if tensor.device.type == "cpu":
        # NumPy's single-threaded row copy. torch's index_select hands a CIFAR batch to its intra-op thread pool,
        # which took 12 ms per batch on a busy 2-core machine against 0.14 ms here; with one thread both take
        # about 0.1 ms, and images[index] 0.9 ms (docs/data.md has the command).
        return torch.from_numpy(tensor.numpy()[index.numpy()])
    return tensor.index_select(0, index)


def _check_pair(images: torch.Tensor, labels: torch.Tensor, owner: str) -> None:
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{owner}: `images` and `labels` must be tensors, got {type(images).__name__} and {type(labels).__name__}"
        )
    if images.ndim < 1 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{owner}: `labels` must have shape (N,) for `images` of shape (N, ...), got labels "
            f"{tuple(labels.shape)} for images {tuple(images.shape)}"
        )
