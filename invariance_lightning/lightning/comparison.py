"""Train the variants of a config family through the CLI and compare their accuracy and shift/scale invariance.

The engine of ``recipes/compare.py`` (docs/recipes.md): :func:`plan_comparison` checks everything that can be
checked before training (the variants, the data, existing runs); :func:`run_comparison` trains or resumes each
variant with ``invariance-lightning fit`` in this process, evaluates its ``last.ckpt`` with
``sequence_preset("report")`` and the chosen published protocols, reads what the run recorded (the
``InvarianceMonitor`` history, the training speed) and writes ``comparison.{md,csv,json}`` and the plots.
Each evaluated variant also gets a record, ``variants/<variant>.json`` beside the tables (its table row, per-frame
results, monitor history and per-epoch log; no weights), from which ``--reuse`` rebuilds the tables and plots
without the checkpoint: commit the records and a fresh clone can redraw the comparison.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from invariance_lightning.lightning.checkpoint import CheckpointInfo, load_classifier, read_checkpoint
from invariance_lightning.lightning.cli import CSV_LOGGER, configure_wandb_mode
from invariance_lightning.lightning.cli import main as cli_main
from invariance_lightning.lightning.data import DATA_DIR_ENV, ImageClassificationDataModule
from invariance_lightning.lightning.published import check_protocol_names, evaluate_protocols
from invariance_lightning.locations import SHARED_WEIGHTS_SUBDIR, shared_dir
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.models.pretrained import resolve_cifar_resnet_weights
from invariance_lightning.reporting.comparison import comparison_cell, comparison_columns, write_comparison
from invariance_lightning.reporting.figures import (
    accuracy_flip_figure,
    monitor_history_figure,
    per_frame_figure,
    save_figures,
)
from invariance_lightning.reporting.tables import json_safe, protocol_numbers
from invariance_lightning.transforms import sequence_preset

MONITOR = "InvarianceMonitor"
CHECKPOINT = "ModelCheckpoint"
#: The variants compared by default, where a family has them.
MAIN_VARIANTS = ("plain", "augmented", "blur", "aps", "augmented_blur")
#: Scalars of the report protocol copied into the table for each sequence.
SEQUENCE_METRICS = ("flip_rate", "consistency", "mac", "worst_case_accuracy")
#: ``InvarianceMonitor`` values (logged as ``invariance/<key>``) read from its last measurement saved in
#: ``last.ckpt``, with their table column: the checkpoint has them whichever logger the run used.
MONITORED = {
    "train/shift/flip_rate": "monitor_train_shift_flip_rate",
    "val/shift/flip_rate": "monitor_val_shift_flip_rate",
}
#: ``metrics.csv`` columns read from the last logged epoch, with their table column.
LOGGED = {"train/images_per_second": "train_images_per_second"}


@dataclass(frozen=True)
class Family:
    """A folder of configs and how to point its datamodule at local data."""

    data_key: str  # the datamodule argument that takes the data location
    data_subdir: str  # where the data sits under a shared-style folder (``<dir>/data/<data_subdir>``)


FAMILIES = {"cifar10": Family("data_dir", "cifar10"), "imagenette": Family("root", "imagenette-128")}


@dataclass(frozen=True)
class Preset:
    """Sizes of a comparison; ``None`` keeps the config's value (or, for ``test_images``, the whole test split).

    ``max_epochs`` caps each variant's epochs: a config planned for fewer (a fine-tuning run) keeps its own.
    """

    max_epochs: int | None
    train_subset: int | None
    test_images: int | None
    trainer: Mapping[str, Any]  # Trainer arguments on the command line
    data: Mapping[str, Any]  # datamodule arguments on the command line
    model: Mapping[str, Any]  # ImageClassifier arguments on the command line
    monitor: Mapping[str, Any]  # InvarianceMonitor arguments replaced in the config copy
    smoke: bool

    def describe(self) -> str:
        """The sizes in words."""
        epochs = "the configs' epochs" if self.max_epochs is None else f"{self.max_epochs} epoch(s)"
        train = "the whole training split" if self.train_subset is None else f"{self.train_subset} training images"
        parts = [f"{epochs} on {train}"]
        groups = (("trainer", self.trainer), ("data", self.data), ("model", self.model), ("monitor", self.monitor))
        for what, arguments in groups:
            if arguments:
                parts.append(f"{what} " + " ".join(f"{key}={value}" for key, value in arguments.items()))
        parts.append("all test images" if self.test_images is None else f"{self.test_images} test images")
        return ", ".join(parts)


#: ``tiny`` is for tests; ``quick`` is a CPU smoke run; ``cpu`` is a real but reduced schedule that a 2-core CPU
#: trains in minutes per variant (20 one-cycle epochs on a 5,000-image training subset, per-epoch validation on 10
#: batches); ``cpu-full`` trains on the whole training split (CIFAR-10: 45,000 images) with the CPU's fastest
#: settings (the datamodule's device-resident uint8 batches with kornia augmentation, channels-last, one-cycle,
#: label smoothing 0.1) for 15 epochs, 30-40 minutes per augmented ResNet-20 on 2 idle cores
#: (benchmarks/results/cpu_training.md); ``full`` trains as the configs say (for a GPU). The CPU presets skip the
#: monitor's per-epoch PNGs (seconds per epoch on a CPU). ``limit_val_batches`` stays >= 2: the CLI parses ``1`` as
#: the float 1.0, which Lightning reads as 100%.
PRESETS = {
    "tiny": Preset(1, 128, 64, trainer={"limit_val_batches": 2, "num_sanity_val_steps": 0}, data={"batch_size": 32},
                   model={}, monitor={"num_samples": 32, "log_plots": False}, smoke=True),
    "quick": Preset(3, 2000, 1000, trainer={"limit_val_batches": 4}, data={}, model={},
                    monitor={"num_samples": 128, "log_plots": False}, smoke=True),
    "cpu": Preset(20, 5000, 2000, trainer={"limit_val_batches": 10}, data={}, model={},
                  monitor={"num_samples": 256, "log_plots": False}, smoke=False),
    "cpu-full": Preset(15, None, None, trainer={}, data={"batch_size": 128},
                       model={"channels_last": True, "label_smoothing": 0.1},
                       monitor={"num_samples": 256, "log_plots": False}, smoke=False),
    "full": Preset(None, None, None, trainer={}, data={}, model={}, monitor={}, smoke=False),
}


# -- configs -------------------------------------------------------------------------------------------------------
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
        return new + node[len(old):]
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


# -- data ----------------------------------------------------------------------------------------------------------
def data_location(repo_root: Path, family: str, data_dir: Path | None, config: Mapping[str, Any]) -> Path | None:
    """Where the family's data is: ``data_dir`` itself, or its ``data/<subdir>`` or ``<subdir>`` subfolder.

    Without ``data_dir``: None for CIFAR when ``$INVARIANCE_DATA_DIR`` is set (the datamodule reads it), else the
    shared folder (``$INVARIANCE_SHARED_DIR``, else beside the repository) if it has the data, else the config's
    own value (None: the datamodule decides).
    """
    spec = FAMILIES[family]
    if data_dir is None:
        if family == "cifar10" and os.environ.get(DATA_DIR_ENV):
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


# -- what a run recorded -------------------------------------------------------------------------------------------
def monitor_history(checkpoint: CheckpointInfo) -> list[dict[str, Any]]:
    """The InvarianceMonitor's measurement history saved in a checkpoint (rows ``{"epoch", "values"}``; the last
    monitor's that has one, empty without)."""
    histories = [state["history"] for state in checkpoint.callback_states(MONITOR) if state.get("history")]
    return histories[-1] if histories else []


def last_monitored(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The :data:`MONITORED` values of the last measurement in a monitor history (NaN without one)."""
    last = history[-1]["values"] if history else {}
    return {key: float(last.get(key, math.nan)) for key in MONITORED}


def last_logged(run_dir: Path, keys: Sequence[str]) -> dict[str, float]:
    """The value of each key in the latest epoch that logged it, over every ``metrics.csv`` under ``run_dir``
    (resumed runs write a new logger version); NaN where none did."""
    found: dict[str, tuple[int, float, float]] = {}
    for path in run_dir.rglob("metrics.csv"):
        written = path.stat().st_mtime
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                epoch = int(float(row.get("epoch") or -1))
                for key in keys:
                    if row.get(key) and (epoch, written) >= found.get(key, (-2, 0.0, math.nan))[:2]:
                        found[key] = (epoch, written, float(row[key]))
    return {key: found[key][2] if key in found else math.nan for key in keys}


def epoch_log(run_dir: Path) -> list[dict[str, float]]:
    """One row per logged epoch over every ``metrics.csv`` under ``run_dir`` (oldest logger version first): the last
    value each column took in that epoch (for step-level columns such as ``train/loss``: the epoch's last step)."""
    epochs: dict[int, dict[str, float]] = {}
    for path in sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                values = {key: float(value) for key, value in row.items() if value and key not in ("epoch", "step")}
                epochs.setdefault(epoch, {"epoch": float(epoch)}).update(values)
    return [epochs[epoch] for epoch in sorted(epochs)]


# -- one variant ---------------------------------------------------------------------------------------------------
@dataclass
class VariantRun:
    """One variant of the comparison: its configs, run directory and the CLI arguments that train it."""

    variant: str
    source: Path
    config: dict[str, Any]
    config_path: Path
    run_dir: Path
    checkpoint: Path
    max_epochs: int
    fit_args: list[str]

    def command(self, resume: bool) -> list[str]:
        """``fit`` arguments of :func:`invariance_lightning.lightning.cli.main`."""
        return ["fit", "--config", str(self.config_path), *self.fit_args, *(["--ckpt_path", "last"] if resume else [])]


def plan_variant(
    variant: str,
    source: Path,
    run_dir: Path,
    preset: Preset,
    data_overrides: Mapping[str, Any],
    wandb_group: str | None,
    weights_dirs: Sequence[Path] = (),
) -> VariantRun:
    """Read the variant's config and decide its checkpoint and CLI overrides (nothing is written); ``wandb_group``
    None trains with CSV logs only. A config's ``model.init_weights`` is resolved to a file now (looked for first in
    ``weights_dirs``), so that a missing one fails before anything trains."""
    config = comparison_config(yaml.safe_load(source.read_text()), run_dir, preset, wandb_group, variant)
    configured = int(config["trainer"].get("max_epochs") or 1)
    max_epochs = min(preset.max_epochs, configured) if preset.max_epochs else configured
    fit_args = ["--trainer.max_epochs", str(max_epochs)]
    init_weights = (config.get("model") or {}).get("init_weights")
    if init_weights is not None:
        fit_args += ["--model.init_weights", str(resolve_cifar_resnet_weights(init_weights, search_dirs=weights_dirs))]
    for key, value in preset.trainer.items():
        fit_args += [f"--trainer.{key}", str(value)]
    for key, value in data_overrides.items():
        fit_args += [f"--data.{key}", str(value)]
    for key, value in preset.model.items():
        fit_args += [f"--model.{key}", str(value)]
    if wandb_group is None:
        fit_args += ["--no_wandb", "true"]
    if not sys.stderr.isatty():
        fit_args += ["--trainer.enable_progress_bar", "false"]
    return VariantRun(variant, source, config, run_dir / "compare_config.yaml", run_dir, checkpoint_path(config),
                      max_epochs, fit_args)


def planned_epochs(run_dir: Path) -> int | None:
    """``trainer.max_epochs`` of the newest config that LightningCLI saved for the run (``config.yaml`` in its log
    folder), or None when there is none."""
    newest: tuple[float, int] | None = None
    for path in run_dir.rglob("config.yaml"):
        config = yaml.safe_load(path.read_text())
        trainer = config.get("trainer") if isinstance(config, dict) else None
        if isinstance(trainer, dict) and trainer.get("max_epochs") is not None:
            written = path.stat().st_mtime
            if newest is None or written > newest[0]:
                newest = (written, int(trainer["max_epochs"]))
    return None if newest is None else newest[1]


def training_action(run: VariantRun, reuse: bool) -> str:
    """``"trained"`` (no checkpoint yet), ``"reused"`` (``last.ckpt`` covers the epochs) or ``"resumed"`` (a run
    of the same length stopped early); ``ValueError`` for an existing run without ``reuse``, or a shorter run
    planned for another number of epochs (its learning-rate schedule is fixed by ``max_epochs``)."""
    if not run.checkpoint.is_file():
        return "trained"
    if not reuse:
        raise ValueError(f"{run.checkpoint} exists: pass --reuse to use or resume it")
    done = read_checkpoint(run.checkpoint).epochs
    if done >= run.max_epochs:
        return "reused"
    planned = planned_epochs(run.run_dir)
    if planned != run.max_epochs:
        raise ValueError(
            f"{run.checkpoint} holds {done} epoch(s) of a run planned for {planned or 'an unknown number of'} "
            f"epochs; its learning-rate schedule is fixed by max_epochs, so it cannot be resumed to {run.max_epochs} "
            f"epochs: delete {run.run_dir}"
        )
    return "resumed"


def train(run: VariantRun, action: str) -> None:
    """Run ``fit`` for ``action`` ``"trained"`` or ``"resumed"`` (from ``last.ckpt``); nothing for ``"reused"``."""
    if action == "reused":
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    print(f"== {run.variant} ({action}): invariance-lightning {shlex.join(run.command(action == 'resumed'))}",
          flush=True)
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it gets args and sys.argv has some too
    try:
        cli_main(run.command(action == "resumed"))
    finally:
        sys.argv = saved_argv
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()  # WandbLogger leaves its run open; the next variant must start its own
    if not run.checkpoint.is_file():
        raise RuntimeError(f"{run.variant}: training finished without writing {run.checkpoint}")


def table_row(
    run: VariantRun,
    results: Mapping[str, Mapping[str, Tensor]],
    protocols: Mapping[str, Mapping[str, float]],
    saved: CheckpointInfo,
    num_images: int,
    training: str,
    preset: str,
    repo_root: Path,
) -> dict[str, Any]:
    """One row of the comparison table (see :func:`~invariance_lightning.reporting.tables.comparison_columns`):
    ``protocols`` are the published protocols' numbers, one column ``<protocol>_<number>`` each."""
    row: dict[str, Any] = {"variant": run.variant, "test_accuracy": float(results["shift"]["per_frame_accuracy"][0])}
    for name, metrics in results.items():
        row.update({f"{name}_{metric}": float(metrics[metric]) for metric in SEQUENCE_METRICS})
    for name, numbers in protocols.items():
        row.update({f"{name}_{key}": value for key, value in protocol_numbers(numbers).items()})
    monitored = last_monitored(monitor_history(saved))
    row.update({column: monitored[key] for key, column in MONITORED.items()})
    logged = last_logged(run.run_dir, list(LOGGED))
    row.update({column: logged[key] for key, column in LOGGED.items()})
    source = run.source.resolve()
    row.update(
        epochs=saved.epochs,
        test_images=num_images,
        training=training,
        preset=preset,
        config=str(source.relative_to(repo_root)) if source.is_relative_to(repo_root) else str(run.source),
        checkpoint=str(run.checkpoint),
        command="invariance-lightning " + shlex.join(run.command(False)),
    )
    return row


# -- records -------------------------------------------------------------------------------------------------------
#: Folder of the per-variant records, under the comparison's output folder.
RECORDS = "variants"


def record_path(output: Path, variant: str) -> Path:
    """``<output>/variants/<variant>.json``."""
    return output / RECORDS / f"{variant}.json"


def evaluation_key(run: VariantRun, data: EvaluationData, settings: ComparisonSettings) -> dict[str, Any]:
    """What a variant's record must have been made with to stand for this comparison's row: the config file's
    content, the preset's sizes and overrides, the epochs, the test images, the seed, the protocols and the
    sequences."""
    return {
        "config_sha256": file_sha256(run.source),
        "preset": settings.preset,
        "preset_description": data.preset.describe(),
        "max_epochs": run.max_epochs,
        "test_images": len(data.labels),
        "seed": settings.seed,
        "protocols": list(settings.protocols),
        "sequences": {name: repr(sequence) for name, sequence in sequence_preset("report").items()},
    }


@dataclass
class VariantRecord:
    """What the comparison keeps of one evaluated variant."""

    row: dict[str, Any]
    results: dict[str, dict[str, Tensor]]
    history: list[dict[str, Any]]
    log: list[dict[str, float]]
    seconds: dict[str, float]
    checkpoint_sha256: str

    def stands_for(self, run: VariantRun) -> bool:
        """Whether the record may replace training and evaluating ``run``: it covers the planned epochs, and the
        run's ``last.ckpt`` is either gone (a fresh clone) or the very file the record was made from."""
        if self.row["epochs"] < run.max_epochs:
            return False
        return not run.checkpoint.is_file() or file_sha256(run.checkpoint) == self.checkpoint_sha256


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(path: Path, key: Mapping[str, Any], record: VariantRecord) -> None:
    """Write a variant's record (replacing the file atomically, so an interrupted write leaves the old one)."""
    payload = {
        "evaluation": key,
        "row": record.row,
        "results": {name: {metric: value.tolist() for metric, value in metrics.items()}
                    for name, metrics in record.results.items()},
        "history": record.history,
        "log": record.log,
        "seconds": record.seconds,
        "checkpoint_sha256": record.checkpoint_sha256,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(json_safe(payload), indent=1, allow_nan=False))
    partial.replace(path)


def read_record(path: Path, key: Mapping[str, Any]) -> VariantRecord | None:
    """The record at ``path`` if it exists and was made with ``key`` (:func:`evaluation_key`), else None."""
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if payload.get("evaluation") != json.loads(json.dumps(json_safe(key))):
        return None
    row = {key: math.nan if value is None else value for key, value in payload["row"].items()}
    results = {name: {metric: torch.tensor(value) for metric, value in metrics.items()}
               for name, metrics in payload["results"].items()}
    return VariantRecord(row, results, payload["history"], payload["log"], payload["seconds"],
                         payload["checkpoint_sha256"])


# -- the whole comparison ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComparisonSettings:
    """What the recipe's command line asks for (``None``: the preset's or the default value)."""

    repo_root: Path  # the repository whose configs/ are compared (relative config paths start there)
    family: str = "cifar10"
    variants: Sequence[str] | None = None  # None: MAIN_VARIANTS; ["all"]: every config of the family
    preset: str = "quick"
    epochs: int | None = None
    train_subset: int | None = None
    test_images: int | None = None
    monitor_samples: int | None = None
    data_dir: Path | None = None
    output: Path | None = None  # default results/compare_<family>_<preset>
    runs_dir: Path | None = None  # default runs/ for full, <output>/runs otherwise
    reuse: bool = False
    no_wandb: bool = False
    seed: int = 0  # the test subset and the published protocols' random shifts
    batch_size: int = 256
    protocols: Sequence[str] = ()  # published protocols (metrics.protocols.PROTOCOLS) run on the test images
    command: str = ""  # the command line, for the report


@dataclass
class ComparisonPlan:
    """A checked comparison, ready to run: nothing has been trained or written yet."""

    settings: ComparisonSettings
    output: Path
    data: EvaluationData
    runs: list[VariantRun]
    actions: dict[str, str]  # training_action of each variant, or "recorded" (its record stands for it)
    records: dict[str, VariantRecord]  # the records of the "recorded" variants
    wandb_project: str | None  # None: no W&B
    started: float  # time.perf_counter() when planning began
    load_start: str  # the load average then


def plan_comparison(settings: ComparisonSettings) -> ComparisonPlan:
    """Check the variants, find the data and decide what each run does; ``ValueError`` listing every problem
    (unknown variants, existing runs without ``reuse``, runs that cannot be resumed) before anything trains."""
    started, load_start = time.perf_counter(), _load_average()
    if settings.preset not in PRESETS:
        raise ValueError(f"unknown preset {settings.preset!r}; valid presets: {list(PRESETS)}")
    check_protocol_names("ComparisonSettings", settings.protocols)
    variants = resolve_variants(settings.repo_root, settings.family, settings.variants)
    output = settings.output or Path("results") / f"compare_{settings.family}_{settings.preset}"
    runs_dir = settings.runs_dir or (Path("runs") if settings.preset == "full" else output / "runs")
    preset = PRESETS[settings.preset]
    preset = replace(preset, max_epochs=settings.epochs or preset.max_epochs,
                     train_subset=settings.train_subset or preset.train_subset,
                     test_images=settings.test_images or preset.test_images)
    if settings.monitor_samples:
        preset = replace(preset, monitor={**preset.monitor, "num_samples": settings.monitor_samples})
    first = yaml.safe_load(next(iter(variants.values())).read_text())
    data = prepare_data(settings.repo_root, settings.family, settings.data_dir, preset, first, settings.seed)
    group = None if settings.no_wandb else output.name
    shared = shared_dir(settings.repo_root)
    weights_dirs = [] if shared is None else [shared / SHARED_WEIGHTS_SUBDIR]
    runs = [plan_variant(variant, path, runs_dir / settings.family / path.stem, data.preset, data.overrides, group,
                         weights_dirs) for variant, path in variants.items()]
    actions, records, problems = {}, {}, []
    for run in runs:
        record = read_record(record_path(output, run.variant), evaluation_key(run, data, settings)) \
            if settings.reuse else None
        if record is not None and record.stands_for(run):
            actions[run.variant], records[run.variant] = "recorded", record
            continue
        try:
            actions[run.variant] = training_action(run, settings.reuse)
        except ValueError as error:
            problems.append(f"{run.variant}: {error}")
    if problems:
        raise ValueError("\n".join(problems) + "\n(or choose another --runs-dir / --output)")
    project = (first["trainer"].get("logger") or {}).get("init_args", {}).get("project", "invariance-lightning")
    wandb_project = None if settings.no_wandb else project
    return ComparisonPlan(settings, output, data, runs, actions, records, wandb_project, started, load_start)


def run_comparison(plan: ComparisonPlan) -> Path:
    """Train (or resume, or reuse), evaluate and tabulate every planned variant; returns ``comparison.md``'s path.

    The tables are rewritten after every variant; the plots are drawn at the end; with W&B a summary run joins
    the training runs' group.
    """
    settings, data = plan.settings, plan.data
    sequences = sequence_preset("report")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup: dict[str, Any] = {
        "family": settings.family, "variants": [run.variant for run in plan.runs], "preset": settings.preset,
        "smoke": data.preset.smoke, "preset_description": data.preset.describe(), "test_images": len(data.labels),
        "seed": settings.seed, "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "command": settings.command, "load_start": plan.load_start,
        "sequences": {name: repr(sequence) for name, sequence in sequences.items()},
        "protocols": list(settings.protocols), "actions": dict(plan.actions), "seconds_per_variant": {},
    }
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, Tensor]]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    for run in plan.runs:
        record = plan.records.get(run.variant) or evaluate_variant(plan, run, device)
        rows.append(record.row)
        results[run.variant], histories[run.variant] = record.results, record.history
        setup["seconds_per_variant"][run.variant] = record.seconds
        setup.update(load_end=_load_average(), seconds=time.perf_counter() - plan.started)
        write_comparison(plan.output, rows, results, sequences, setup)
        print(f"== {run.variant}: " + ", ".join(f"{k} {comparison_cell(k, v)}" for k, v in rows[-1].items()
                                                 if isinstance(v, float)), flush=True)
    figures = {"accuracy_vs_flip_rate": accuracy_flip_figure(rows, list(sequences)),
               "monitor_history": monitor_history_figure(histories, list(MONITORED))}
    for name, sequence in sequences.items():
        by_variant = {variant: r[name] for variant, r in results.items()}
        figures[f"{name}_per_frame"] = per_frame_figure(sequence, by_variant, f"{name}: {sequence!r}")
    plots = save_figures(plan.output, figures)
    if plan.wandb_project is not None:
        configure_wandb_mode()
        log_to_wandb(plan.output.name, plan.wandb_project, plan.output, rows, plots, setup)
    return plan.output / "comparison.md"


def evaluate_variant(plan: ComparisonPlan, run: VariantRun, device: str) -> VariantRecord:
    """Train (or resume, or reuse) one variant, evaluate its ``last.ckpt`` and write its record."""
    settings, data = plan.settings, plan.data
    tick = time.perf_counter()
    train(run, plan.actions[run.variant])
    trained = time.perf_counter()
    loaded = load_classifier(run.checkpoint, map_location=device)
    results = evaluate_sequences(loaded.model, data.images, data.labels, sequence_preset("report"),
                                 batch_size=settings.batch_size, normalize=loaded.normalize)
    protocols = evaluate_protocols(loaded.model, data.images, data.labels, settings.protocols, seed=settings.seed,
                                   normalize=loaded.normalize, batch_size=settings.batch_size)
    saved = read_checkpoint(run.checkpoint)
    row = table_row(run, results, protocols, saved, len(data.labels), plan.actions[run.variant], settings.preset,
                    settings.repo_root.resolve())
    seconds = {"training": trained - tick, "evaluation": time.perf_counter() - trained}
    record = VariantRecord(row, results, monitor_history(saved), epoch_log(run.run_dir), seconds,
                           file_sha256(run.checkpoint))
    write_record(record_path(plan.output, run.variant), evaluation_key(run, data, settings), record)
    return record


def log_to_wandb(
    group: str, project: str, output: Path, rows: Sequence[Mapping[str, Any]], plots: Sequence[Path],
    setup: Mapping[str, Any],
) -> None:
    """A summary W&B run in the training runs' group: the table, the plots and each variant's scalars."""
    import wandb

    run = wandb.init(project=project, group=group, name="comparison", job_type="comparison", dir=str(output),
                     config=dict(setup))
    columns = list(comparison_columns(rows))
    data = [[row[c] for c in columns] for row in rows]
    table = wandb.Table(columns=columns, data=data)  # type: ignore[arg-type]  # wandb: list[str | int], invariant
    run.log({"comparison": table, **{f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}})
    for row in rows:
        for column, value in row.items():
            if isinstance(value, (int, float)) and column != "test_images":
                run.summary[f"{row['variant']}/{column}"] = value
    run.finish()


def _load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
