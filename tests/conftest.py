"""Shared test fixtures: where the real data lives, and a quiet, deterministic environment.

Tests that read ``../shared`` (through the fixtures in :data:`SHARED_FIXTURES`) must carry
``@pytest.mark.shared_data``; one that does not errors at setup. When the shared folder is missing they skip with a
reason, except under CI (``CI=true``), where they fail: a CI run must not pass by skipping its real-data tests.
"""

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

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs this file's hooks in a throw-away session

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Fixtures that hand out a folder of ../shared; a test using one (directly or through another fixture) needs the
#: ``shared_data`` marker.
SHARED_FIXTURES = ("cifar10_dir", "imagenette_dir", "cifar_resnet_weights_dir")


def shared_root() -> Path:
    """``$INVARIANCE_SHARED_DIR`` if set, else the ``shared`` folder beside the checkout."""
    return Path(os.environ.get("INVARIANCE_SHARED_DIR") or REPO_ROOT.parent / "shared")


def running_in_ci() -> bool:
    """Whether the ``CI`` environment variable says this is a CI run (``true``, ``1`` or ``yes``, any case)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_shared(path: Path) -> Path:
    """``path`` if it exists; otherwise fail the test under CI and skip it (with the reason) elsewhere."""
    if path.exists():
        return path
    where = "../shared beside the checkout, or set INVARIANCE_SHARED_DIR"
    if running_in_ci():
        pytest.fail(
            f"CI=true but ../shared is missing at {path}: this shared_data test needs it ({where})", pytrace=False
        )
    pytest.skip(f"needs real data at {path} ({where})")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Error out (before any fixture runs) when a test reaches a shared-data fixture without the marker."""
    used = [name for name in SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
    if used and item.get_closest_marker("shared_data") is None:
        pytest.fail(
            f"{item.nodeid} uses the shared-data fixture(s) {', '.join(used)} but is not marked: add "
            "@pytest.mark.shared_data, so that `-m 'not shared_data'` deselects it and CI fails rather than skips "
            "it without ../shared",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    return require_shared(shared_root() / "data" / "cifar10")


@pytest.fixture(scope="session")
def imagenette_dir() -> Path:
    return require_shared(shared_root() / "data" / "imagenette-128")


@pytest.fixture(scope="session")
def cifar_resnet_weights_dir() -> Path:
    return require_shared(shared_root() / "weights" / "cifar10-resnet")


def write_random_cifar10(folder: Path, train: int, test: int, name: str = "cifar10", classes: int = 10) -> Path:
    """Random uint8 images and labels in the shared ``<name>_{train,test}.npz`` format, for runs without ../shared."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        np.savez(
            folder / f"{name}_{split}.npz",
            images=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            labels=rng.integers(0, classes, count).astype(np.int64),
            classes=np.array([f"class{i}" for i in range(classes)]),
        )
    return folder


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
