"""Every use of another library's private internals, in one place (torch-only: Lightning objects by attribute).

Each helper says why no public API does the job. ``tests/test_compat.py`` has one test per helper against the
real library (a real ``Trainer`` run, real kornia modules, a real ``Metric``), so an upgrade that renames or
changes an internal fails there, by name, instead of deep inside a callback.

This module must not import ``lightning``: the torch-only layers use it too, and the Lightning objects it is
handed are only read by attribute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from kornia.augmentation.base import _BasicAugmentationBase
from torch import nn
from torch.nn.modules.utils import _pair
from torchmetrics import Metric

__all__ = [
    "PostComputeMetric",
    "as_pair",
    "callback_state_key",
    "keep_kornia_rng_on",
    "loop_data_source",
    "training_batch_index",
]


def loop_data_source(loop: Any) -> Any:
    """The ``_DataLoaderSource`` of a Lightning fit/evaluation loop: where that loop will get its loaders from
    (the datamodule, the module's ``*_dataloader`` hooks, or loaders passed to ``fit``/``test``).

    Private because Lightning has no public accessor for a loader source that has not been iterated yet; the
    public ``trainer.*_dataloaders`` are only set once the loop has run. Used: ``.instance``, ``.is_defined()``,
    ``.dataloader()``.
    """
    return loop._data_source


def training_batch_index(trainer: Any) -> int:
    """The index of the training batch being transferred to the device, counted from 0 since training began,
    across epochs, and restored from checkpoints on resume (Lightning counts a batch as started right after its
    transfer, so this is read in ``on_after_batch_transfer``).

    Private because the loops' progress counters are Lightning internals (``fit_loop.epoch_loop.batch_progress``);
    ``trainer.global_step`` counts optimizer steps instead (different under gradient accumulation, and not
    advanced by a batch whose step was skipped), and ``batch_idx`` restarts every epoch.
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


def callback_state_key(callback: Any, **identity: Any) -> str:
    """A ``Callback.state_key`` that tells instances with different ``identity`` apart in one checkpoint.

    Private because Lightning only offers the protected ``Callback._generate_state_key`` (its documentation
    recommends it for exactly this), which formats the class name with the keyword arguments.
    """
    return callback._generate_state_key(**identity)


def keep_kornia_rng_on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Make every kornia augmentation inside ``module`` draw its random parameters on ``device`` in ``dtype``.

    Private because kornia's public ``set_rng_device_and_dtype`` lives on its private base class
    ``_BasicAugmentationBase`` (the common base of augmentations and their containers), which is the only way to
    recognise the modules that have it.
    """
    for submodule in module.modules():
        if isinstance(submodule, _BasicAugmentationBase):
            submodule.set_rng_device_and_dtype(device, dtype)


class PostComputeMetric(Metric):
    """A torchmetrics ``Metric`` whose ``compute()`` result passes through :meth:`after_compute` *after*
    torchmetrics' own wrapper (which syncs, caches and squeezes one-element tensors to 0-d).

    Private because that wrapper is installed by the protected ``Metric._wrap_compute``; no public hook sees the
    result after the squeeze, which is what a metric must undo to keep a 1-element curve 1-D.
    """

    def after_compute(self, result: Any) -> Any:
        """Post-process what ``compute()`` returns to callers (identity here)."""
        return result

    def _wrap_compute(self, compute: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(wrapped)
        def post_processed(*args: Any, **kwargs: Any) -> Any:
            return self.after_compute(wrapped(*args, **kwargs))

        return post_processed


def as_pair(value: object) -> tuple[int, int]:
    """``(v, v)`` for an int, a pair unchanged: how torch's conv and pooling layers store ``stride``, ``padding``
    and ``kernel_size`` that were given either way (typed ``object``: torch types those attributes loosely).

    Private because torch only has ``torch.nn.modules.utils._pair`` for this, the helper its own layers use.
    """
    return _pair(value)
