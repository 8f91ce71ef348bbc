"""Shared test fixtures: where the real data lives, and a quiet, deterministic environment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread: the tests run tiny tensors, where a second thread only adds contention (badly so on a
# loaded 2-core machine and in the 2-process DDP tests); spawned processes inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The ``shared`` folder beside the checkout, or ``$INVARIANCE_SHARED_DIR``."""
    return Path(os.environ.get("INVARIANCE_SHARED_DIR", REPO_ROOT.parent / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs real data at {path} (../shared beside the checkout, or set INVARIANCE_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    return _require(shared_root() / "data" / "cifar10")


@pytest.fixture(scope="session")
def imagenette_dir() -> Path:
    return _require(shared_root() / "data" / "imagenette-128")


@pytest.fixture(scope="session")
def cifar_resnet_weights_dir() -> Path:
    return _require(shared_root() / "weights" / "cifar10-resnet")


def write_random_cifar10(folder: Path, train: int, test: int) -> Path:
    """Random uint8 images and labels in the shared ``cifar10_{train,test}.npz`` format, for runs without ../shared."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        np.savez(
            folder / f"cifar10_{split}.npz",
            images=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            labels=rng.integers(0, 10, count).astype(np.int64),
            classes=np.array([f"class{i}" for i in range(10)]),
        )
    return folder


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
