"""TensorBatchLoader, the standard-path dataset and the seeded hold-out."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from invariance_lightning.lightning.data import TensorBatchLoader, TensorImageDataset, epoch_sampler, holdout_split


def _tensors(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return images, torch.arange(n)


def _order(loader) -> list[int]:
    return [int(i) for _, labels in loader for i in labels]


def test_batches_cover_every_example_once_and_match_their_labels():
    images, labels = _tensors()
    loader = TensorBatchLoader(images, labels, batch_size=5, shuffle=True, seed=3)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3] and len(loader) == 5
    for batch_images, batch_labels in batches:
        assert batch_images.dtype == torch.uint8 and batch_images.shape[1:] == (3, 4, 4)
        assert torch.equal(batch_images[:, 0, 0, 0].long(), batch_labels)  # image i carries the value i
    order = _order(loader)
    assert sorted(order) == list(range(23)) and order != list(range(23))


def test_drop_last_and_unshuffled_order():
    images, labels = _tensors()
    loader = TensorBatchLoader(images, labels, batch_size=5, drop_last=True)
    assert len(loader) == 4 and _order(loader) == list(range(20))


def test_epochs_reshuffle_reproducibly():
    images, labels = _tensors()
    first = TensorBatchLoader(images, labels, batch_size=4, shuffle=True, seed=1)
    second = TensorBatchLoader(images, labels, batch_size=4, shuffle=True, seed=1)
    epoch0 = _order(first)
    assert _order(first) == epoch0 == _order(second)  # no set_epoch: same order again
    first.set_epoch(1)
    assert _order(first) != epoch0
    second.set_epoch(1)
    assert _order(first) == _order(second)
    assert _order(TensorBatchLoader(images, labels, batch_size=4, shuffle=True, seed=2)) != epoch0


def test_standard_dataloader_with_the_same_sampler_yields_the_same_batches():
    images, labels = _tensors()
    fast = TensorBatchLoader(images, labels, batch_size=6, shuffle=True, seed=5)
    standard = DataLoader(
        TensorImageDataset(images, labels), batch_size=6, sampler=epoch_sampler(23, shuffle=True, seed=5)
    )
    for epoch in (0, 1):
        fast.set_epoch(epoch)
        standard.sampler.set_epoch(epoch)
        for (a_images, a_labels), (b_images, b_labels) in zip(fast, standard, strict=True):
            assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)


def test_ranks_get_disjoint_equal_shards():
    images, labels = _tensors(20)
    shards = [
        _order(TensorBatchLoader(images, labels, batch_size=3, shuffle=True, num_replicas=2, rank=rank))
        for rank in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 10
    assert sorted(shards[0] + shards[1]) == list(range(20))


def test_loader_rejects_bad_input():
    images, labels = _tensors()
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatchLoader(images, labels, batch_size=0)
    with pytest.raises(ValueError, match=r"labels.*\(N,\)"):
        TensorBatchLoader(images, labels[:-1], batch_size=2)
    with pytest.raises(TypeError, match="tensors"):
        TensorImageDataset(images.numpy(), labels)


def test_holdout_split_sizes_disjoint_and_seeded():
    train, val = holdout_split(100, 10, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again_train, again_val = holdout_split(100, 10, seed=0)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(holdout_split(100, 10, seed=1)[1], val)
    assert len(holdout_split(100, 0.25, seed=0)[1]) == 25
    assert len(holdout_split(100, 0, seed=0)[1]) == 0


@pytest.mark.parametrize("bad", [100, -1, 1.0, -0.1])
def test_holdout_split_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="val_split"):
        holdout_split(100, bad, seed=0)


def test_holdout_split_rejects_bool():
    with pytest.raises(TypeError, match="val_split"):
        holdout_split(100, True, seed=0)
