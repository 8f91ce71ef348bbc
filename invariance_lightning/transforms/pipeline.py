"""What a user's dataset does to its images: its torchvision ``Normalize``, whether reading is random, a plain copy.

A Lightning user's dataset is a tree: ``Subset`` (``random_split``) and other wrappers hold one ``dataset``,
``ConcatDataset`` holds several ``datasets``, and any node may carry a torchvision-style ``transform`` (a
``Compose`` of v1 or v2 transforms, possibly nested in ``RandomApply``/``RandomChoice``/``nn.Sequential``).
The measurement needs three facts about it, found here without Lightning:

- :func:`find_normalization`: the ``Normalize`` in the transform chain, so that normalized batches can be
  un-normalized before a shift fills vacated pixels with black;
- :func:`reads_randomly`: whether reading the same item twice gives different data (training augmentation);
- :func:`with_transform`: a copy of the tree whose ``transform`` s are replaced (e.g. by the validation one).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from invariance_lightning.transforms.normalization import Normalization

__all__ = ["datasets_in", "find_attribute", "find_normalization", "reads_randomly", "transforms_in", "with_transform"]


def datasets_in(dataset: Any) -> Iterator[Any]:
    """Every node of a dataset tree, depth first: the dataset, then what it wraps (``dataset``, ``datasets``)."""
    yield dataset
    inner = getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        yield from datasets_in(inner)
    for child in getattr(dataset, "datasets", None) or ():
        yield from datasets_in(child)


def transforms_in(dataset: Any) -> list[Callable[..., Any]]:
    """The distinct (by identity) non-None ``transform`` attributes of the dataset tree, in tree order."""
    found: list[Callable[..., Any]] = []
    for node in datasets_in(dataset):
        transform = getattr(node, "transform", None)
        if transform is not None and all(transform is not seen for seen in found):
            found.append(transform)
    return found


def find_attribute(dataset: Any, name: str) -> Any:
    """The first non-None attribute ``name`` in the dataset tree (e.g. ``classes`` of a torchvision dataset)."""
    for node in datasets_in(dataset):
        value = getattr(node, name, None)
        if value is not None:
            return value
    return None


def _normalize_classes() -> tuple[type, ...]:
    """torchvision's ``Normalize`` classes (transforms v1 and v2)."""
    from torchvision.transforms import Normalize
    from torchvision.transforms.v2 import Normalize as NormalizeV2

    return Normalize, NormalizeV2


def _normalize_steps(transform: Any, classes: tuple[type, ...]) -> Iterator[Any]:
    """The ``Normalize`` steps inside one transform (``Compose``, ``RandomApply``, ``nn.Sequential``, ...)."""
    if isinstance(transform, classes):
        yield transform
        return
    children = getattr(transform, "transforms", None)  # Compose, RandomApply/Choice/Order (v1 and v2)
    if isinstance(transform, nn.Sequential):
        children = list(transform)
    elif children is None and getattr(transform, "transform", None) is not None:  # torchvision StandardTransform
        children = [transform.transform]
    for child in children if isinstance(children, (list, tuple, nn.ModuleList)) else ():
        yield from _normalize_steps(child, classes)


def find_normalization(dataset: Any) -> Normalization | None:
    """The ``(mean, std)`` of the torchvision ``Normalize`` in the dataset tree's transforms, or None if it has none.

    Raises ``ValueError`` when the tree normalizes with two different statistics (e.g. a ``ConcatDataset`` of
    differently normalized parts), since then no single normalization describes its images.

    >>> from torchvision import transforms
    >>> class Images(Dataset):
    ...     transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    >>> find_normalization(Images())
    Normalization(mean=(0.5,), std=(0.25,))
    """
    classes = _normalize_classes()
    found = {
        Normalization(tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std))
        for transform in transforms_in(dataset)
        for step in _normalize_steps(transform, classes)
    }
    if len(found) > 1:
        raise ValueError(
            f"the dataset's transforms normalize with {len(found)} different statistics ({sorted(found)}); "
            "pass data_normalization=(mean, std) to say which one its images carry"
        )
    return next(iter(found), None)


def _same(first: Any, second: Any) -> bool:
    """Whether two items read from a dataset hold the same data (tensors, arrays, PIL images, nested containers)."""
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return first.shape == second.shape and bool(torch.equal(first, second))
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if hasattr(first, "tobytes") and hasattr(second, "tobytes"):  # numpy arrays, PIL images
        return np.asarray(first).shape == np.asarray(second).shape and first.tobytes() == second.tobytes()
    return bool(first == second)


def _read_seeded(dataset: Any, index: int, seed: int) -> Any:
    """``dataset[index]`` with torch's, Python's and NumPy's global generators seeded by ``seed``, all restored."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            return dataset[index]
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def reads_randomly(dataset: Any, index: int = 0) -> bool:
    """Whether reading ``dataset[index]`` twice, under two different seeds, gives different data (augmentation).

    The global random generators are restored afterwards, so checking does not change a training run.
    """
    return not _same(_read_seeded(dataset, index, 0), _read_seeded(dataset, index, 1))


def with_transform(dataset: Dataset, transform: Callable[..., Any] | None) -> Dataset:
    """A shallow copy of the dataset tree in which every node's ``transform`` is ``transform``.

    Wrappers (``Subset``, ``ConcatDataset``, anything with ``dataset``/``datasets``) are copied down to the nodes
    that carry a ``transform``; the data itself is shared, never copied. A torchvision ``VisionDataset``'s
    ``transforms`` (the ``StandardTransform`` pairing it with ``target_transform``) follows along.
    """
    node: Any = copy.copy(dataset)  # any dataset class: its attributes are found by name
    inner = getattr(node, "dataset", None)
    if inner is not None and inner is not dataset:
        node.dataset = with_transform(inner, transform)
    children = getattr(node, "datasets", None)
    if children:
        node.datasets = [with_transform(child, transform) for child in children]
    if getattr(node, "transform", None) is not None:
        node.transform = transform
        from torchvision.datasets.vision import StandardTransform

        if isinstance(getattr(node, "transforms", None), StandardTransform):
            node.transforms = StandardTransform(transform, getattr(node, "target_transform", None))
    return node
