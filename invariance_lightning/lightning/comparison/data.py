"""Where a family's data is, and the test images every variant is evaluated on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any

from torch import Tensor

from invariance_lightning.lightning.comparison.settings import FAMILIES, Preset
from invariance_lightning.lightning.data import ImageClassificationDataModule
from invariance_lightning.locations import env_data_dir, shared_dir


def data_location(repo_root: Path, family: str, data_dir: Path | None, config: Mapping[str, Any]) -> Path | None:
    """Where the family's data is: ``data_dir`` itself, or its ``data/<subdir>`` or ``<subdir>`` subfolder.

    Without ``data_dir``: None for CIFAR when ``$INVARIANCE_DATA_DIR`` is set (the datamodule reads it), else the
    shared folder (``$INVARIANCE_SHARED_DIR``, else beside the repository) if it has the data, else the config's
    own value (None: the datamodule decides).
    """
    spec = FAMILIES[family]
    if data_dir is None:
        if family == "cifar10" and env_data_dir() is not None:
            return None
        root = shared_dir(repo_root)
        if root is not None and (root / "data" / spec.data_subdir).is_dir():
            return root / "data" / spec.data_subdir
        configured = config["data"].get("init_args", {}).get(spec.data_key)
        return None if configured is None else (repo_root / configured).resolve()
    for candidate in (data_dir / "data" / spec.data_subdir, data_dir / spec.data_subdir):
        if candidate.is_dir():
            return candidate
    return data_dir


def build_datamodule(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> ImageClassificationDataModule:
    """The config's datamodule with ``overrides`` applied, set up (data found and read)."""
    data = config["data"]
    module_name, class_name = data["class_path"].rsplit(".", 1)
    datamodule = getattr(import_module(module_name), class_name)(**{**data.get("init_args", {}), **overrides})
    datamodule.setup("fit")
    return datamodule


@dataclass
class EvaluationData:
    """The images every variant is evaluated on, and how the training data is overridden."""

    images: Tensor
    labels: Tensor
    overrides: dict[str, Any]  # datamodule arguments for the CLI
    preset: Preset  # with train_subset and test_images dropped where the split is smaller


def prepare_data(
    repo_root: Path, family: str, data_dir: Path | None, preset: Preset, config: Mapping[str, Any], seed: int
) -> EvaluationData:
    """Find the data (before anything trains), choose the test images (seeded by ``seed``) and the training-data
    overrides."""
    location = data_location(repo_root, family, data_dir, config)
    overrides: dict[str, Any] = {} if location is None else {FAMILIES[family].data_key: str(location)}
    overrides.update(preset.data)
    datamodule = build_datamodule(config, overrides)
    available = datamodule.split_size("train")
    if preset.train_subset is not None and preset.train_subset >= available:
        print(f"note: the training split has {available} images, fewer than {preset.train_subset}: training on all")
        preset = replace(preset, train_subset=None)
    if preset.train_subset is not None:
        overrides["train_subset"] = preset.train_subset
    wanted = preset.test_images
    count = None if wanted is None or wanted >= datamodule.split_size("test") else wanted
    preset = replace(preset, test_images=count)  # the report says "all test images" rather than a larger number
    images, labels = datamodule.split_arrays("test", count, seed=seed)
    return EvaluationData(images, labels, overrides, preset)
