"""Per-channel input normalization: the one ``Normalization`` type and the dataset statistics.

Every measurement normalizes *after* its geometric transform (so a zero fill stays black), the datamodules
publish their statistics as ``mean``/``std``, and the pretrained CIFAR ResNets expect ImageNet's; all of them take
their values from here. Wherever a ``Normalization`` is accepted, any ``(mean, std)`` pair of per-channel
sequences is accepted too.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from kornia.enhance import denormalize as kornia_denormalize
from kornia.enhance import normalize as kornia_normalize
from torch import Tensor

from invariance_lightning.validation import check_images

__all__ = [
    "CIFAR_STATS",
    "IMAGENET_STATS",
    "Normalization",
    "as_float_images",
    "check_normalize",
    "denormalize_images",
    "normalize_images",
]


class Normalization(NamedTuple):
    """Per-channel ``(mean, std)`` that images in ``[0, 1]`` are normalized with: ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


#: ImageNet's statistics; also what the pretrained CIFAR-10 ResNet-20/56 checkpoints expect.
IMAGENET_STATS = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

#: Statistics of the CIFAR training images (population statistics over all pixels), by dataset name.
#: CIFAR-10's were recomputed from the shared copy (see docs/data.md); the often quoted std (0.2023, 0.1994, 0.2010)
#: is the mean of per-image stds, not the dataset's. CIFAR-100's are the published values (no local copy to check).
CIFAR_STATS: dict[str, Normalization] = {
    "cifar10": Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": Normalization(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def normalize_images(images: Tensor, normalization: Normalization | None) -> Tensor:
    """``(images - mean) / std`` per channel (``images`` unchanged for ``None``), in the images' dtype and device.

    >>> import torch
    >>> normalize_images(torch.ones(1, 3, 1, 1), IMAGENET_STATS).flatten().tolist()  # doctest: +ELLIPSIS
    [2.2489..., 2.4285..., 2.6400...]
    """
    if normalization is None:
        return images
    mean, std = normalization
    return kornia_normalize(images, images.new_tensor(mean), images.new_tensor(std))


def denormalize_images(images: Tensor, normalization: Normalization | None) -> Tensor:
    """``images * std + mean`` per channel: the inverse of :func:`normalize_images` (``images`` unchanged for None).

    >>> import torch
    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.allclose(denormalize_images(normalize_images(x, IMAGENET_STATS), IMAGENET_STATS), x, atol=1e-6))
    True
    """
    if normalization is None:
        return images
    mean, std = normalization
    return kornia_denormalize(images, images.new_tensor(mean), images.new_tensor(std))


def check_normalize(owner: str, name: str, value: object) -> Normalization | None:
    """Return ``value`` (None, or a ``(mean, std)`` pair of per-channel sequences of numbers) as a plain
    ``(mean, std)`` tuple of float tuples; TypeError for another type, ValueError for unequal lengths or a
    std <= 0.

    >>> check_normalize("f", "normalize", ([0.5], [0]))
    Traceback (most recent call last):
    ...
    ValueError: f: normalize must be a (mean, std) pair of equal lengths with std > 0, got ([0.5], [0])
    """
    if value is None:
        return None
    expected = "a (mean, std) pair of per-channel sequences of numbers"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    try:
        mean, std = (tuple(float(v) for v in part) for part in value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}") from None
    if len(mean) != len(std) or not mean or any(s <= 0 for s in std):
        raise ValueError(f"{owner}: {name} must be a (mean, std) pair of equal lengths with std > 0, got {value!r}")
    # a plain (mean, std) tuple, unpacked like a Normalization everywhere (yaml.safe_dump writes it, not a NamedTuple)
    return cast(Normalization, (mean, std))


def as_float_images(images: Tensor, owner: str = "as_float_images") -> Tensor:
    """An ``(N, C, H, W)`` image batch as floats in [0, 1]: uint8 is divided by 255, floating point passes unchanged
    (TypeError for another dtype, through :func:`~invariance_lightning.validation.check_images`)."""
    check_images(owner, "images", images, uint8=True)
    return images.float().div_(255) if images.dtype == torch.uint8 else images
