"""transforms.pipeline: reading what a user's dataset tree does to its images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset
from torchvision import transforms as T
from torchvision.datasets.vision import StandardTransform
from torchvision.transforms import v2

from invariance_lightning.transforms.pipeline import (
    datasets_in,
    find_attribute,
    find_normalization,
    reads_randomly,
    transforms_in,
    with_transform,
)


class Images(Dataset):
    """A torchvision-style dataset: uint8 HWC arrays through ``transform``."""

    def __init__(self, transform=None, count: int = 4) -> None:
        self.images = np.arange(count * 8 * 8 * 3, dtype=np.uint8).reshape(count, 8, 8, 3)
        self.transform, self.target_transform = transform, None
        self.transforms = StandardTransform(transform, None)
        self.classes = ["a", "b"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), index % 2


@pytest.mark.parametrize(
    "transform",
    [
        T.Compose([T.ToTensor(), T.Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))]),
        v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])]
        ),
        T.Compose([T.ToTensor(), T.RandomApply([nn.Sequential(T.Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)))], p=1.0)]),
    ],
    ids=["v1", "v2", "nested"],
)
def test_find_normalization_reads_normalize_through_wrappers(transform):
    tree = ConcatDataset([Subset(Images(transform), [0, 1]), Subset(Images(transform), [2])])
    assert find_normalization(tree) == ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert find_normalization(Images(T.ToTensor())) is None
    assert find_normalization(TensorDataset(torch.zeros(2, 3, 4, 4))) is None


def test_two_different_normalizations_are_an_error():
    parts = [Images(T.Compose([T.ToTensor(), T.Normalize((m,) * 3, (0.5,) * 3)])) for m in (0.1, 0.2)]
    with pytest.raises(ValueError, match="normalize with 2 different statistics .* data_normalization"):
        find_normalization(ConcatDataset(parts))


def test_reads_randomly_tells_augmentation_apart_and_leaves_the_random_state_alone():
    plain, augmenting = Images(T.ToTensor()), Images(T.Compose([T.ToTensor(), T.RandomCrop(8, padding=3)]))
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    assert not reads_randomly(plain, 1)
    assert reads_randomly(augmenting, 1)
    assert torch.equal(states[0], torch.get_rng_state())
    assert states[1] == random.getstate() and np.array_equal(states[2], np.random.get_state()[1])
    assert not reads_randomly(Subset(plain, [3]), 0)


def test_with_transform_replaces_every_transform_and_copies_no_data():
    augment = T.Compose([T.ToTensor(), T.RandomHorizontalFlip()])
    base = Images(augment)
    tree = ConcatDataset([Subset(base, [0, 1]), Subset(Images(augment), [2])])
    plain = with_transform(tree, T.ToTensor())
    assert transforms_in(tree) == [augment]  # the original is untouched
    (replaced,) = transforms_in(plain)
    assert isinstance(replaced, T.ToTensor)
    first = plain.datasets[0].dataset
    assert first is not base and first.images is base.images  # shallow: the arrays are shared
    assert first.transforms.transform is replaced  # torchvision's StandardTransform follows
    torch.testing.assert_close(plain[1][0], T.ToTensor()(base.images[1]))
    assert len(plain) == len(tree) == 3


def test_datasets_in_and_find_attribute_walk_the_tree():
    inner = Images()
    tree = Subset(ConcatDataset([TensorDataset(torch.zeros(1)), inner]), [0])
    assert [type(d).__name__ for d in datasets_in(tree)] == ["Subset", "ConcatDataset", "TensorDataset", "Images"]
    assert find_attribute(tree, "classes") == ["a", "b"]
    assert find_attribute(TensorDataset(torch.zeros(1)), "classes") is None
