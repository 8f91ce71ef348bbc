"""The variants' configs: finding a family's YAML files and the copy each variant trains on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from invariance_lightning.lightning.cli import CSV_LOGGER
from invariance_lightning.lightning.comparison.settings import FAMILIES, MAIN_VARIANTS, Preset

#: The callbacks the comparison reads and rewrites in a config, by class name.
MONITOR = "InvarianceMonitor"
CHECKPOINT = "ModelCheckpoint"


def family_configs(repo_root: Path, family: str) -> dict[str, Path]:
    """``{variant: config path}`` of ``<repo_root>/configs/<family>/<label>_<variant>.yaml``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {sorted(FAMILIES)}")
    paths = sorted((repo_root / "configs" / family).glob("*_*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no configs/{family}/<label>_<variant>.yaml files under {repo_root}")
    return {path.stem.split("_", 1)[1]: path for path in paths}


def resolve_variants(repo_root: Path, family: str, names: Sequence[str] | None) -> dict[str, Path]:
    """The chosen variants' configs in the given order: ``None`` picks :data:`MAIN_VARIANTS`, ``["all"]`` every one."""
    available = family_configs(repo_root, family)
    if names is None:
        names = [v for v in MAIN_VARIANTS if v in available] or list(available)
    elif list(names) == ["all"]:
        names = list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown} for family {family!r}; valid variants: {sorted(available)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--variants names a variant twice: {list(names)}")
    return {name: available[name] for name in names}


def moved_paths(node: Any, old: str, new: str) -> Any:
    """A copy of a config tree with every string path ``old`` or ``old/...`` rewritten to start with ``new``."""
    if isinstance(node, Mapping):
        return {key: moved_paths(value, old, new) for key, value in node.items()}
    if isinstance(node, list):
        return [moved_paths(value, old, new) for value in node]
    if isinstance(node, str) and (node == old or node.startswith(old + "/")):
        return new + node[len(old) :]
    return node


def find_callback(config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The first ``trainer.callbacks`` entry whose class is ``name``."""
    for callback in config["trainer"].get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).rsplit(".", 1)[-1] == name:
            return callback
    return None


def comparison_config(
    config: Mapping[str, Any], run_dir: Path, preset: Preset, wandb_group: str | None, variant: str
) -> dict[str, Any]:
    """The variant's config for this comparison.

    Everything the config puts under its ``default_root_dir`` moves to ``run_dir``; with ``wandb_group`` the W&B
    logger joins that group (run name: the variant) and a CSVLogger is added beside it, so that ``metrics.csv``
    exists either way; the preset's ``monitor`` arguments replace the InvarianceMonitor's.
    """
    old = config["trainer"].get("default_root_dir")
    if not old:
        raise ValueError("the config must set trainer.default_root_dir (its run directory)")
    moved: dict[str, Any] = moved_paths(config, str(old).rstrip("/"), str(run_dir))
    moved["trainer"]["default_root_dir"] = str(run_dir)
    checkpoint = find_callback(moved, CHECKPOINT)
    if checkpoint is None:
        raise ValueError("the config needs a ModelCheckpoint callback with save_last: true")
    checkpoint.setdefault("init_args", {})["save_last"] = True
    monitor = find_callback(moved, MONITOR)
    if monitor is not None:
        monitor.setdefault("init_args", {}).update(preset.monitor)
    logger = moved["trainer"].get("logger")
    if wandb_group is not None and isinstance(logger, dict) and "Wandb" in str(logger.get("class_path")):
        logger.setdefault("init_args", {}).update(group=wandb_group, name=variant, save_dir=str(run_dir))
        moved["trainer"]["logger"] = [logger, {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}]
    return moved


def checkpoint_path(config: Mapping[str, Any]) -> Path:
    """``<ModelCheckpoint dirpath>/last.ckpt`` (Lightning's default dirpath when the config sets none)."""
    callback = find_callback(config, CHECKPOINT)
    dirpath = (callback or {}).get("init_args", {}).get("dirpath")
    return Path(dirpath or Path(config["trainer"]["default_root_dir"]) / "checkpoints") / "last.ckpt"
