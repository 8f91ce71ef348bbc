"""The batch pipeline: uint8 or float images -> float in [0, 1] -> (training only) kornia augmentation -> normalize."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from kornia.augmentation import ImageSequential
from kornia.enhance import normalize
from torch import nn

from invariance_lightning._compat import keep_kornia_rng_on
from invariance_lightning.transforms.normalization import as_float_images, check_normalize
from invariance_lightning.validation import check_images, check_optional_int, check_size

__all__ = ["BatchAugmentation"]

_CPU = torch.device("cpu")


class BatchAugmentation(nn.Module):
    """Augment and normalize whole image batches on whatever device they are on.

    ``forward(images)`` takes an ``(N, C, H, W)`` batch, ``uint8`` (scaled to ``[0, 1]``) or floating point (taken
    as already in ``[0, 1]``), applies ``augmentation`` only when training, then normalizes with ``mean``/``std``
    in training *and* evaluation, so both see inputs on the same scale. Padding fills of the augmentation are
    therefore black (0 before normalization), as with torchvision's ``RandomCrop(padding=4)`` on PIL images.

    Seeding: kornia draws its random parameters from torch's global RNG; this module keeps them on the CPU
    generator whatever device the images are on (the draws are a few numbers per image), so a given seed gives the
    same augmentation on CPU and GPU. With ``seed=None`` the global CPU RNG is used as is (``seed_everything``
    makes runs repeatable). With an int ``seed``, the parameters of a training batch are drawn from the CPU
    generator re-seeded with ``SeedSequence(seed, spawn_key=batch_id)`` inside ``torch.random.fork_rng``, so they
    depend only on ``(seed, batch_id)`` and the global RNG stream is left untouched; ``batch_id`` defaults to the
    number of earlier seeded training calls of this module.

    Args:
        augmentation: a kornia ``AugmentationSequential``/``ImageSequential`` or ``None`` for no augmentation.
        image_size: expected ``(H, W)`` (or one int) of incoming images; ``None`` skips the check.
        mean, std: per-channel normalization; both or neither.
        seed: see above.
    """

    def __init__(
        self,
        augmentation: ImageSequential | None = None,
        *,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if augmentation is not None and not isinstance(augmentation, ImageSequential):
            raise TypeError(
                "BatchAugmentation: `augmentation` must be a kornia AugmentationSequential/ImageSequential or None, "
                f"got {type(augmentation).__name__}"
            )
        self.augmentation = augmentation
        self.image_size = None if image_size is None else check_size("BatchAugmentation", "image_size", image_size)
        self.seed = check_optional_int("BatchAugmentation", "seed", seed, 0)
        self.seeded_calls = 0
        self.mean: torch.Tensor | None
        self.std: torch.Tensor | None
        if mean is None and std is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
        else:
            mean_values, std_values = check_normalize("BatchAugmentation", "mean and std", (mean, std)) or ((), ())
            self.register_buffer("mean", torch.tensor(mean_values), persistent=False)
            self.register_buffer("std", torch.tensor(std_values), persistent=False)
        self._keep_rng_on_cpu()

    def _keep_rng_on_cpu(self) -> None:
        if self.augmentation is not None:
            keep_kornia_rng_on(self.augmentation, _CPU, torch.float32)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> BatchAugmentation:
        # kornia moves its samplers to the device a module is moved to; keep them on the CPU (see class docstring).
        out = super()._apply(fn, *args, **kwargs)
        self._keep_rng_on_cpu()
        return out

    def forward(
        self, images: torch.Tensor, *, train: bool | None = None, batch_id: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Return the float, normalized (and, when training, augmented) batch.

        ``train=None`` follows ``self.training``. ``batch_id`` (ints) names the batch for seeding; it is ignored
        when ``seed`` is None or when not training.
        """
        images = self.to_unit_float(images)
        training = self.training if train is None else train
        if training and self.augmentation is not None:
            with _cpu_rng_seeded(self._batch_seed(batch_id)):
                images = self.augmentation(images)
        if self.mean is not None and self.std is not None:
            images = normalize(images, self.mean.to(images), self.std.to(images))
        return images

    def to_unit_float(self, images: torch.Tensor) -> torch.Tensor:
        """Validate an ``(N, C, H, W)`` batch (one channel per ``mean`` value, of ``image_size``) and return it as
        float in ``[0, 1]`` (uint8 is divided by 255)."""
        channels = None if self.mean is None else self.mean.numel()
        check_images("BatchAugmentation", "images", images, uint8=True, channels=channels, size=self.image_size)
        return as_float_images(images)

    def _batch_seed(self, batch_id: Sequence[int] | None) -> int | None:
        """The CPU generator seed for this training batch, or None when the module is not seeded."""
        if self.seed is None:
            return None
        if batch_id is None:
            batch_id = (self.seeded_calls,)
        self.seeded_calls += 1
        spawn_key = tuple(int(i) for i in batch_id)
        return int(np.random.SeedSequence(self.seed, spawn_key=spawn_key).generate_state(1, np.uint64)[0])


@contextmanager
def _cpu_rng_seeded(seed: int | None) -> Iterator[None]:
    """Run the body with the CPU generator seeded with ``seed``, restoring its state after (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also re-seed every CUDA generator, which fork_rng with
        # devices=[] does not restore.
        torch.default_generator.manual_seed(seed)
        yield
