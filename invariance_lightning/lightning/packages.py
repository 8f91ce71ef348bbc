"""The two packages a ``Trainer`` can come from: ``lightning.pytorch`` and the standalone ``pytorch_lightning``.

Lightning publishes the same code twice, as ``lightning.pytorch`` (in the ``lightning`` package) and as
``pytorch_lightning``, and the classes of one are not those of the other: a ``pytorch_lightning``
``LightningDataModule`` is no ``lightning.pytorch.LightningDataModule``, a ``pytorch_lightning`` ``WandbLogger`` no
``lightning.pytorch.loggers.WandbLogger``, and each package's ``is_overridden`` raises ``ValueError: Expected a
parent`` for the other's objects. So the Lightning layer recognises the objects of a user's Trainer (loggers,
datamodule, module) by the classes of both packages, and its callbacks subclass both packages' ``Callback``.

``pytorch_lightning`` is optional: where it is not installed, everything here is ``lightning.pytorch`` alone.
"""

from __future__ import annotations

from types import ModuleType

import lightning.pytorch
import lightning.pytorch.loggers
from lightning.pytorch.utilities.model_helpers import is_overridden as _is_overridden

__all__ = [
    "CALLBACK_BASES",
    "LOGGERS",
    "PACKAGES",
    "TENSORBOARD_LOGGERS",
    "WANDB_LOGGERS",
    "is_overridden",
]


def _pytorch_lightning() -> ModuleType | None:
    """The ``pytorch_lightning`` package, or None where it is not installed."""
    try:
        import pytorch_lightning
        import pytorch_lightning.loggers
    except ImportError:  # an optional package: without it, only lightning.pytorch Trainers exist
        return None
    return pytorch_lightning


#: ``lightning.pytorch``, then ``pytorch_lightning`` where it is installed.
PACKAGES: tuple[ModuleType, ...] = tuple(p for p in (lightning.pytorch, _pytorch_lightning()) if p is not None)

#: Every package's ``Callback``. The invariance callbacks subclass them all, so that they are callbacks of either
#: package (``pytorch_lightning.Trainer(callbacks=InvarianceMonitor())`` and type-checked configuration such as
#: ``LightningCLI``'s ``trainer.callbacks`` ask ``isinstance(callback, Callback)`` of their own package).
CALLBACK_BASES: tuple[type, ...] = tuple(package.Callback for package in PACKAGES)
#: Every package's logger base class, ``WandbLogger`` and ``TensorBoardLogger``: use these in ``isinstance``.
LOGGERS: tuple[type, ...] = tuple(package.loggers.Logger for package in PACKAGES)
WANDB_LOGGERS: tuple[type, ...] = tuple(package.loggers.WandbLogger for package in PACKAGES)
TENSORBOARD_LOGGERS: tuple[type, ...] = tuple(package.loggers.TensorBoardLogger for package in PACKAGES)


def is_overridden(method_name: str, instance: object) -> bool:
    """Whether ``instance``, a ``LightningModule``, ``LightningDataModule`` or ``Callback`` of either package,
    overrides ``method_name`` of that base class.

    Each package's own ``is_overridden`` finds the base class among its own classes only, and raises ``ValueError:
    Expected a parent`` for an object of the other package.
    """
    for package in PACKAGES:
        for base in (package.LightningModule, package.LightningDataModule, package.Callback):
            if isinstance(instance, base):
                return _is_overridden(method_name, instance, parent=base)
    raise TypeError(
        f"is_overridden: expected a LightningModule, LightningDataModule or Callback (lightning.pytorch or "
        f"pytorch_lightning), got {type(instance).__name__}"
    )
