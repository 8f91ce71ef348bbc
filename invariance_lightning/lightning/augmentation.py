"""Run a :class:`BatchAugmentation` on each batch after Lightning moved it to the device.

Why a mixin on ``on_after_batch_transfer`` rather than a ``Callback``: callbacks do not get that hook, and the
closest callback hook, ``on_train_batch_start``, can only change a batch in place (useless for the tuple a custom
``collate_fn`` returns) and runs after the LightningModule's own batch hooks have seen the raw batch.
``on_after_batch_transfer`` is Lightning's designated place for device-side transforms: it returns a new batch, it
runs for every stage (so evaluation batches get the same uint8 -> float conversion and normalization as training
batches) and before any other hook or callback looks at the batch, and it exists on both ``LightningModule`` and
``LightningDataModule``, so the mixin fits either (if both override the hook, Lightning calls only the datamodule's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from invariance_lightning._compat import training_batch_index
from invariance_lightning.augment.pipeline import BatchAugmentation

__all__ = ["GPUAugmentationMixin", "map_batch_images"]


def map_batch_images(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor], key: str | None = None) -> Any:
    """Apply ``fn`` to the images of ``batch`` and return a batch of the same structure.

    The images are ``batch[key]`` for a mapping batch (``key`` required), else the first element of a tuple/list
    batch such as ``(images, targets)``, or the batch itself when it is a tensor.
    """
    if key is not None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"map_batch_images: `key`={key!r} needs a mapping batch, got {type(batch).__name__}")
        if key not in batch:
            raise KeyError(f"map_batch_images: batch has no key {key!r}; its keys are {list(batch)}")
        return {**batch, key: fn(batch[key])}
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)) and len(batch) > 0:
        images = fn(batch[0])
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
            return batch._replace(**{batch._fields[0]: images})  # type: ignore[attr-defined]
        return type(batch)([images, *batch[1:]])
    if isinstance(batch, Mapping):
        raise TypeError("map_batch_images: a mapping batch needs `key` naming its images")
    raise TypeError(
        f"map_batch_images: expected a tensor, a non-empty tuple/list or a mapping, got {type(batch).__name__}"
    )


class GPUAugmentationMixin:
    """Mixin for a ``LightningModule`` or ``LightningDataModule`` (list it first among the bases).

    Set ``self.gpu_augmentation`` (a :class:`BatchAugmentation`, e.g. from ``build_augmentation``) in ``__init__``
    and, for dict batches, ``self.gpu_augmentation_key``. Training batches (``trainer.training``) are augmented and
    normalized, all other batches (validation, test, predict, sanity check) only normalized. The result is passed
    through the precision plugin, so ``"16-true"`` models get half-precision inputs. A seeded augmentation is keyed
    by ``(global_rank, index of the training batch since the start of training)``, so DDP ranks differ and a run
    resumed from a checkpoint continues the same sequence. A subclass overriding ``on_after_batch_transfer`` must
    call ``super().on_after_batch_transfer(batch, dataloader_idx)``.
    """

    gpu_augmentation: BatchAugmentation
    gpu_augmentation_key: str | None = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)  # type: ignore[misc]
        augmentation = getattr(self, "gpu_augmentation", None)
        if not isinstance(augmentation, BatchAugmentation):
            raise TypeError(
                f"{type(self).__name__}: GPUAugmentationMixin needs `self.gpu_augmentation` set to a "
                f"BatchAugmentation (e.g. build_augmentation(...)), got {type(augmentation).__name__}"
            )
        trainer = self.trainer  # type: ignore[attr-defined]
        training = bool(trainer.training)
        batch_id = (trainer.global_rank, training_batch_index(trainer)) if training else None

        def transform(images: torch.Tensor) -> torch.Tensor:
            out = augmentation(images, train=training, batch_id=batch_id)
            return trainer.precision_plugin.convert_input(out)

        return map_batch_images(batch, transform, self.gpu_augmentation_key)
