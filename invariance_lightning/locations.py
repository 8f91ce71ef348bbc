"""Where the real data, the pretrained weights and the cache are: one answer for the CLI, the recipes and the module.

The **shared folder** holds ``data/cifar10/*.npz``, ``data/imagenette-128/`` and ``weights/cifar10-resnet/*.th``. It is
``$INVARIANCE_SHARED_DIR`` when that is set, else ``shared/`` beside the checkout (the folder above the one that holds
the ``invariance_lightning`` package), if it exists.

**Data** without an explicit folder is looked for in ``$INVARIANCE_DATA_DIR``, then in the shared folder's ``data/``
(:func:`data_search_roots`); what is downloaded goes to :func:`cache_dir`. **Weights** are looked for in the shared
folder's ``weights/cifar10-resnet/`` before the cache (``models.pretrained.cifar_resnet_weights``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CHECKOUT_SHARED_DIR",
    "DATA_DIR_ENV",
    "SHARED_DIR_ENV",
    "SHARED_WEIGHTS_SUBDIR",
    "cache_dir",
    "data_search_roots",
    "env_data_dir",
    "shared_dir",
    "shared_dir_origin",
]

#: The environment variable that names the shared folder.
SHARED_DIR_ENV = "INVARIANCE_SHARED_DIR"
#: The environment variable that names a folder with local copies of datasets (looked in before the shared folder).
DATA_DIR_ENV = "INVARIANCE_DATA_DIR"
#: Where the pretrained CIFAR-10 ResNets lie inside the shared folder.
SHARED_WEIGHTS_SUBDIR = Path("weights") / "cifar10-resnet"
#: Where the datasets lie inside the shared folder.
SHARED_DATA_SUBDIR = Path("data")

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


def env_data_dir() -> Path | None:
    """``$INVARIANCE_DATA_DIR`` when set, else None."""
    return Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else None


def data_search_roots() -> list[tuple[Path, str]]:
    """Folders to look for a dataset in when no folder was given, in order, each with the setting it came from:
    ``$INVARIANCE_DATA_DIR``, then the shared folder's ``data/``."""
    roots = []
    from_env = env_data_dir()
    if from_env is not None:
        roots.append((from_env, f"${DATA_DIR_ENV}"))
    shared = shared_dir()
    if shared is not None:
        roots.append((shared / SHARED_DATA_SUBDIR, f"the shared folder, {shared_dir_origin()}"))
    return roots


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/invariance_lightning``, else ``~/.cache/invariance_lightning``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "invariance_lightning"
