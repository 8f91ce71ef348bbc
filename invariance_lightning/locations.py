"""Where the shared folder of real data and weights is: one answer for the CLI, the recipes and the module alike.

The shared folder holds ``data/cifar10/*.npz``, ``data/imagenette-128/`` and ``weights/cifar10-resnet/*.th``. It is
``$INVARIANCE_SHARED_DIR`` when that is set, else ``shared/`` beside the checkout (the folder above the one that holds
the ``invariance_lightning`` package), if it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKOUT_SHARED_DIR", "SHARED_DIR_ENV", "SHARED_WEIGHTS_SUBDIR", "shared_dir", "shared_dir_origin"]

#: The environment variable that names the shared folder.
SHARED_DIR_ENV = "INVARIANCE_SHARED_DIR"
#: Where the pretrained CIFAR-10 ResNets lie inside the shared folder.
SHARED_WEIGHTS_SUBDIR = Path("weights") / "cifar10-resnet"

#: ``shared/`` beside the checkout, the fallback without ``$INVARIANCE_SHARED_DIR``.
CHECKOUT_SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


def shared_dir(checkout: Path | None = None) -> Path | None:
    """``$INVARIANCE_SHARED_DIR`` when set (whether or not it exists: a wrong value must not be ignored), else
    ``shared/`` beside the checkout (this package's, or the repository root ``checkout``) when it exists, else None."""
    if os.environ.get(SHARED_DIR_ENV):
        return Path(os.environ[SHARED_DIR_ENV])
    beside = CHECKOUT_SHARED_DIR if checkout is None else Path(checkout).parent / "shared"
    return beside if beside.is_dir() else None


def shared_dir_origin() -> str:
    """Where :func:`shared_dir` looked, in words, for error messages that say what to set."""
    if os.environ.get(SHARED_DIR_ENV):
        return f"${SHARED_DIR_ENV}={os.environ[SHARED_DIR_ENV]}"
    return f"{CHECKOUT_SHARED_DIR} (beside the checkout; set ${SHARED_DIR_ENV} to use another folder)"
