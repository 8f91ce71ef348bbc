"""Train the variants of a config family and compare their accuracy and shift/scale invariance side by side.

For each variant (``configs/<family>/<label>_<variant>.yaml``) the recipe

1. trains it through the project's own CLI (``invariance-lightning fit``, in-process), on a copy of the config whose
   run directory is moved under ``--runs-dir``, with the size preset's overrides on the command line; with
   ``--reuse`` a run whose ``last.ckpt`` already covers the epochs is read instead, and a run stopped before its
   ``max_epochs`` is resumed (``--ckpt_path last``; a finished run cannot be extended: its one-cycle schedule is
   fixed by ``max_epochs``);
2. evaluates ``last.ckpt`` with the full protocol (``sequence_preset("report")``: diagonal shifts 0..8 px and
   scales 0.8..1.2) on the test split (a seeded subset below ``--preset full``);
3. reads the ``InvarianceMonitor``'s last flip rates (train vs val subset) from ``last.ckpt`` and the last
   epoch's ``train/images_per_second`` from the run's ``metrics.csv``;

and writes ``comparison.md``, ``comparison.csv``, ``comparison.json`` and PNG plots to ``--output``
(default ``results/compare_<family>_<preset>``); the tables are rewritten after every variant. With W&B enabled
(offline unless you are logged in) the training runs and a summary run with the table and plots share one W&B group.
Run from the repository root, e.g.::

    python recipes/compare.py --preset quick --no-wandb          # smoke run: ~11 min on 2 CPU cores (docs/recipes.md)
    python recipes/compare.py --preset cpu --variants all        # 20 epochs on 5,000 images: docs/results.md
    python recipes/compare.py --preset full --reuse              # the configs' schedules, for a GPU
    python recipes/compare.py --family imagenette --variants plain blur --preset full
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
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
from matplotlib.figure import Figure
from torch import Tensor

from invariance_lightning import evaluate_invariance, sequence_preset
from invariance_lightning.reporting.figures import per_frame_figure
from invariance_lightning.lightning.cli import configure_wandb_mode
from invariance_lightning.lightning.cli import main as cli_main
from invariance_lightning.lightning.data import ImageClassificationDataModule
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.metrics.evaluate import Normalization
from invariance_lightning.reporting.tables import results_to_dict
from invariance_lightning.transforms import TransformSequence

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO_ROOT / "configs"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
MONITOR = "InvarianceMonitor"
CHECKPOINT = "ModelCheckpoint"
#: The variants compared by default, where a family has them.
MAIN_VARIANTS = ("plain", "augmented", "blur", "aps", "augmented_blur")


@dataclass(frozen=True)
class Family:
    """A folder of configs and how to point its datamodule at local data."""

    data_key: str  # the datamodule argument that takes the data location
    data_subdir: str  # where the data sits under a shared-style folder (``<dir>/data/<data_subdir>``)


FAMILIES = {"cifar10": Family("data_dir", "cifar10"), "imagenette": Family("root", "imagenette-128")}


@dataclass(frozen=True)
class Preset:
    """Sizes of a comparison; ``None`` keeps the config's value (or, for ``test_images``, the whole test split)."""

    max_epochs: int | None
    train_subset: int | None
    test_images: int | None
    trainer: Mapping[str, Any]  # Trainer arguments on the command line
    data: Mapping[str, Any]  # datamodule arguments on the command line
    monitor: Mapping[str, Any]  # InvarianceMonitor arguments replaced in the config copy
    smoke: bool


#: ``tiny`` is for tests; ``quick`` is a CPU smoke run; ``cpu`` is a real but reduced schedule that a 2-core CPU
#: trains in minutes per variant (20 one-cycle epochs on a 5,000-image training subset, per-epoch validation on 10
#: batches); ``full`` trains as the configs say (for a GPU). The CPU presets skip the monitor's per-epoch PNGs
#: (seconds per epoch on a CPU). ``limit_val_batches`` stays >= 2: the CLI parses ``1`` as the float 1.0, which
#: Lightning reads as 100%.
PRESETS = {
    "tiny": Preset(1, 128, 64, trainer={"limit_val_batches": 2, "num_sanity_val_steps": 0}, data={"batch_size": 32},
                   monitor={"num_samples": 32, "log_plots": False}, smoke=True),
    "quick": Preset(3, 2000, 1000, trainer={"limit_val_batches": 4}, data={},
                    monitor={"num_samples": 128, "log_plots": False}, smoke=True),
    "cpu": Preset(20, 5000, 2000, trainer={"limit_val_batches": 10}, data={},
                  monitor={"num_samples": 256, "log_plots": False}, smoke=False),
    "full": Preset(None, None, None, trainer={}, data={}, monitor={}, smoke=False),
}

#: Columns of ``comparison.csv``, in order, with their headers in ``comparison.md`` (None: CSV only).
COLUMNS: dict[str, str | None] = {
    "variant": "variant",
    "test_accuracy": "test acc",
    "shift_flip_rate": "shift flip",
    "shift_consistency": "shift cons.",
    "shift_mac": "shift MAC",
    "shift_worst_case_accuracy": "shift worst acc",
    "scale_flip_rate": "scale flip",
    "scale_consistency": "scale cons.",
    "scale_mac": "scale MAC",
    "scale_worst_case_accuracy": "scale worst acc",
    "monitor_train_shift_flip_rate": "train flip (monitor)",
    "monitor_val_shift_flip_rate": "val flip (monitor)",
    "train_images_per_second": "train img/s",
    "epochs": "epochs",
    "test_images": None,
    "training": "training",
    "preset": None,
    "config": None,
    "checkpoint": None,
    "command": None,
}
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

DEFINITIONS = """\
- **test acc**: top-1 accuracy on the unshifted test images (frame (0, 0) of the shift sequence).
- **flip**: P(top-1 prediction changes between consecutive frames); **cons.**: fraction of all frame pairs with the
  same prediction; **MAC**: mean absolute change of the previous frame's top-1 probability between consecutive
  frames; **worst acc**: fraction of images classified correctly in every frame.
- **shift**: 9 frames, diagonal 1-px steps from (0, 0) to (8, 8), zero fill; **scale**: 9 frames, factors 0.8 to 1.2
  about the centre, zero padding or centre crop (`sequence_preset("report")`).
- **train/val flip (monitor)**: shift flip rate that `InvarianceMonitor` measured in the last trained epoch on its
  fixed training-subset and validation-subset images (diagonal 1-px steps to (3, 3), zero fill), as saved in
  `last.ckpt` (the values it logs as `invariance/{train,val}/shift/flip_rate`).
- **train img/s**: `train/images_per_second` of the last trained epoch, as `ImageClassifier` logs it: training images
  over the time from the start to the end of the training epoch, which includes data loading, augmentation, the
  epoch's validation and the `InvarianceMonitor` measurement."""


# -- configs -------------------------------------------------------------------------------------------------------
def family_configs(family: str) -> dict[str, Path]:
    """``{variant: config path}`` of ``configs/<family>/<label>_<variant>.yaml``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {sorted(FAMILIES)}")
    paths = sorted((CONFIG_ROOT / family).glob("*_*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no configs/{family}/<label>_<variant>.yaml files under {CONFIG_ROOT}")
    return {path.stem.split("_", 1)[1]: path for path in paths}


def resolve_variants(family: str, names: Sequence[str] | None) -> dict[str, Path]:
    """The chosen variants' configs in the given order: ``None`` picks :data:`MAIN_VARIANTS`, ``["all"]`` every one."""
    available = family_configs(family)
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
    config = moved_paths(config, str(old).rstrip("/"), str(run_dir))
    config["trainer"]["default_root_dir"] = str(run_dir)
    if find_callback(config, CHECKPOINT) is None:
        raise ValueError("the config needs a ModelCheckpoint callback with save_last: true")
    find_callback(config, CHECKPOINT).setdefault("init_args", {})["save_last"] = True
    monitor = find_callback(config, MONITOR)
    if monitor is not None:
        monitor.setdefault("init_args", {}).update(preset.monitor)
    logger = config["trainer"].get("logger")
    if wandb_group is not None and isinstance(logger, dict) and "Wandb" in str(logger.get("class_path")):
        logger.setdefault("init_args", {}).update(group=wandb_group, name=variant, save_dir=str(run_dir))
        config["trainer"]["logger"] = [logger, {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}]
    return config


def checkpoint_path(config: Mapping[str, Any]) -> Path:
    """``<ModelCheckpoint dirpath>/last.ckpt`` (Lightning's default dirpath when the config sets none)."""
    callback = find_callback(config, CHECKPOINT)
    dirpath = (callback or {}).get("init_args", {}).get("dirpath")
    return Path(dirpath or Path(config["trainer"]["default_root_dir"]) / "checkpoints") / "last.ckpt"


# -- data ----------------------------------------------------------------------------------------------------------
def data_location(family: str, data_dir: Path | None, config: Mapping[str, Any]) -> Path | None:
    """Where the family's data is: ``--data-dir`` itself, or its ``data/<subdir>`` or ``<subdir>`` subfolder.

    Without ``--data-dir``: None for CIFAR when ``$INVARIANCE_DATA_DIR`` is set (the datamodule reads it), else the
    shared folder beside the repository if it has the data, else the config's own value (None: the datamodule
    decides).
    """
    spec = FAMILIES[family]
    if data_dir is None:
        if family == "cifar10" and os.environ.get("INVARIANCE_DATA_DIR"):
            return None
        shared = REPO_ROOT.parent / "shared" / "data" / spec.data_subdir
        if shared.is_dir():
            return shared
        configured = config["data"].get("init_args", {}).get(spec.data_key)
        return None if configured is None else (REPO_ROOT / configured).resolve()
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


# -- one variant ---------------------------------------------------------------------------------------------------
def read_checkpoint(checkpoint: Path) -> tuple[int, list[dict[str, Any]]]:
    """Epochs completed when ``checkpoint`` was saved (Lightning stores the 0-based epoch it was saved in), and the
    InvarianceMonitor's measurement history saved in it (rows ``{"epoch", "values"}``; empty without a monitor)."""
    # a datamodule given a pathlib folder saves it among its hyperparameters; paths are safe to unpickle
    with torch.serialization.safe_globals([pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath,
                                           pathlib.WindowsPath]):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    history: list[dict[str, Any]] = []
    for key, callback in (state.get("callbacks") or {}).items():
        if key.startswith(MONITOR) and callback.get("history"):
            history = callback["history"]
    return int(state["epoch"]) + 1, history


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
    variant: str, source: Path, args: argparse.Namespace, preset: Preset, data_overrides: Mapping[str, Any]
) -> VariantRun:
    """Read the variant's config and decide its run directory, checkpoint and CLI overrides (nothing is written)."""
    original = yaml.safe_load(source.read_text())
    run_dir = args.runs_dir / args.family / source.stem
    config = comparison_config(original, run_dir, preset, None if args.no_wandb else args.output.name, variant)
    max_epochs = preset.max_epochs or int(config["trainer"].get("max_epochs") or 1)
    fit_args = ["--trainer.max_epochs", str(max_epochs)]
    for key, value in preset.trainer.items():
        fit_args += [f"--trainer.{key}", str(value)]
    for key, value in data_overrides.items():
        fit_args += [f"--data.{key}", str(value)]
    if args.no_wandb:
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
    done = read_checkpoint(run.checkpoint)[0]
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


def evaluate(
    run: VariantRun,
    images: Tensor,
    labels: Tensor,
    sequences: Mapping[str, TransformSequence],
    batch_size: int,
    data_normalization: Normalization,
) -> dict[str, dict[str, Tensor]]:
    """The report protocol's metrics of the run's ``last.ckpt`` on the test images.

    A model trained without explicit ``mean``/``std`` normalized with its datamodule's statistics, which the
    checkpoint does not keep (``load_classifier`` then assumes CIFAR-10's): ``data_normalization`` is used instead.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_classifier(run.checkpoint, map_location=device)
    own = getattr(loaded.model, "hparams", {}).get("mean") is not None
    normalize = loaded.normalize if own else data_normalization
    return {
        name: evaluate_invariance(loaded.model, images, labels, sequence, batch_size=batch_size, normalize=normalize)
        for name, sequence in sequences.items()
    }


def table_row(
    run: VariantRun,
    results: Mapping[str, Mapping[str, Tensor]],
    saved: tuple[int, Sequence[Mapping[str, Any]]],
    num_images: int,
    training: str,
    preset: str,
) -> dict[str, Any]:
    """One row of the comparison table (see :data:`COLUMNS`); ``saved`` is :func:`read_checkpoint` of the run."""
    row: dict[str, Any] = {"variant": run.variant, "test_accuracy": float(results["shift"]["per_frame_accuracy"][0])}
    for name, metrics in results.items():
        row.update({f"{name}_{metric}": float(metrics[metric]) for metric in SEQUENCE_METRICS})
    epochs, history = saved
    monitored = last_monitored(history)
    row.update({column: monitored[key] for key, column in MONITORED.items()})
    logged = last_logged(run.run_dir, list(LOGGED))
    row.update({column: logged[key] for key, column in LOGGED.items()})
    row.update(
        epochs=epochs,
        test_images=num_images,
        training=training,
        preset=preset,
        config=str(run.source.relative_to(REPO_ROOT)) if run.source.is_relative_to(REPO_ROOT) else str(run.source),
        checkpoint=str(run.checkpoint),
        command="invariance-lightning " + shlex.join(run.command(False)),
    )
    return row


# -- outputs -------------------------------------------------------------------------------------------------------
def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.1f}" if column == "train_images_per_second" else f"{value:.4f}"
    return str(value)


def comparison_markdown(rows: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> str:
    """``comparison.md``: the setup (smoke runs labelled), the table, plots, commands and definitions."""
    shown = [column for column, header in COLUMNS.items() if header]
    numeric = [bool(rows) and isinstance(rows[0][c], (int, float)) for c in shown]
    table = ["| " + " | ".join(str(COLUMNS[c]) for c in shown) + " |",
             "|" + "".join("---:|" if n else "---|" for n in numeric)]
    table += ["| " + " | ".join(_cell(row[c], c) for c in shown) + " |" for row in rows]
    smoke = setup["smoke"]
    title = f"# Invariance comparison: {setup['family']} variants" + (
        f" (SMOKE RUN, preset {setup['preset']})" if smoke else f" (preset {setup['preset']})"
    )
    parts = [title]
    if smoke:
        parts.append(
            "> **Smoke run**: it checks that training, evaluation and reporting run end to end. The models are far "
            "from trained, so the numbers say nothing about how the variants compare."
        )
    parts += [
        f"Preset **{setup['preset']}**: {setup['preset_description']} ({setup['test_images']} test images used, "
        f"seed {setup['seed']}). Device {setup['device']}, {setup['threads']} torch threads, {setup['cpus']} CPUs "
        f"({setup['machine']}), load average {setup['load_start']} at the start and {setup['load_end']} at the end; "
        f"{setup['seconds']:.0f} s in total (timings under load are not comparable across machines).",
        "\n".join(table),
        "![accuracy vs flip rate](accuracy_vs_flip_rate.png)",
        "![InvarianceMonitor flip rates over the epochs](monitor_history.png)",
        "![shift: per-frame accuracy and flip rate](shift_per_frame.png)",
        "![scale: per-frame accuracy and flip rate](scale_per_frame.png)",
        "## Commands",
        "```bash\n" + "\n".join([setup["command"], *(row["command"] for row in rows)]) + "\n```",
        "Each variant trains on a copy of its config (`compare_config.yaml` in its run directory) whose run "
        "directory is moved under the comparison's runs folder.",
        "## Definitions",
        DEFINITIONS,
    ]
    return "\n\n".join(parts) + "\n"


def accuracy_flip_figure(rows: Sequence[Mapping[str, Any]], sequences: Sequence[str]) -> Figure:
    """Test accuracy against flip rate, one point per variant, one panel per sequence."""
    fig = Figure(figsize=(4.6 * len(sequences), 3.8), dpi=100, layout="constrained")
    for ax, name in zip(fig.subplots(1, len(sequences), squeeze=False)[0], sequences):
        for row in rows:
            ax.scatter(row[f"{name}_flip_rate"], row["test_accuracy"])
            ax.annotate(row["variant"], (row[f"{name}_flip_rate"], row["test_accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.set(title=f"{name}: accuracy vs flip rate", xlabel=f"{name} flip rate (lower: more invariant)",
               ylabel="test accuracy")
        ax.grid(alpha=0.3)
    return fig


def write_tables(
    output: Path,
    rows: Sequence[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    sequences: Mapping[str, TransformSequence],
    setup: Mapping[str, Any],
) -> None:
    """Write ``comparison.csv``, ``.md`` and ``.json`` for the variants done so far."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / "comparison.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    (output / "comparison.md").write_text(comparison_markdown(rows, setup))
    payload = {
        "setup": dict(setup),
        "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows],
        "results": {variant: results_to_dict(r, sequences) for variant, r in results.items()},
    }
    (output / "comparison.json").write_text(json.dumps(payload, indent=1))


def monitor_history_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """The InvarianceMonitor's :data:`MONITORED` values over the training epochs, one panel per value, one line per
    variant."""
    fig = Figure(figsize=(4.6 * len(MONITORED), 3.8), dpi=100, layout="constrained")
    for ax, key in zip(fig.subplots(1, len(MONITORED), squeeze=False, sharey=True)[0], MONITORED):
        for variant, history in histories.items():
            points = [(row["epoch"], row["values"][key]) for row in history if key in row["values"]]
            if points:
                ax.plot(*zip(*points), marker=".", label=variant)
        ax.set(title=f"monitor: {key}", xlabel="epoch", ylabel="flip rate", ylim=(0, None))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def write_plots(
    output: Path,
    rows: Sequence[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    sequences: Mapping[str, TransformSequence],
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[Path]:
    """The PNG plots: accuracy vs flip rate, the monitor's flip rates over the epochs (``histories``: each
    variant's monitor history), and per sequence the per-frame accuracy and flip rate of every variant; returns
    their paths."""
    figures = {"accuracy_vs_flip_rate": accuracy_flip_figure(rows, list(sequences)),
               "monitor_history": monitor_history_figure(histories)}
    for name, sequence in sequences.items():
        by_variant = {variant: r[name] for variant, r in results.items()}
        figures[f"{name}_per_frame"] = per_frame_figure(sequence, by_variant, f"{name}: {sequence!r}")
    paths = []
    for name, figure in figures.items():
        figure.savefig(output / f"{name}.png")
        paths.append(output / f"{name}.png")
    return paths


def log_to_wandb(
    group: str, project: str, output: Path, rows: Sequence[Mapping[str, Any]], plots: Sequence[Path],
    setup: Mapping[str, Any],
) -> None:
    """A summary W&B run in the training runs' group: the table, the plots and each variant's scalars."""
    import wandb

    run = wandb.init(project=project, group=group, name="comparison", job_type="comparison", dir=str(output),
                     config=dict(setup))
    table = wandb.Table(columns=list(COLUMNS), data=[[row[c] for c in COLUMNS] for row in rows])
    run.log({"comparison": table, **{f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}})
    for row in rows:
        for column, value in row.items():
            if isinstance(value, (int, float)) and column != "test_images":
                run.summary[f"{row['variant']}/{column}"] = value
    run.finish()


# -- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/compare.py",
        description="Train the variants of a config family and compare their accuracy and shift/scale invariance.",
    )
    parser.add_argument("--family", default="cifar10", choices=sorted(FAMILIES), help="configs/<family>/ (default: cifar10)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"variants to compare, or 'all' (default: those of {list(MAIN_VARIANTS)} the family has)")
    parser.add_argument("--preset", default="quick", choices=list(PRESETS),
                        help="default quick; " + "; ".join(f"{name}: {describe(p)}" for name, p in PRESETS.items()))
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--train-subset", type=int, help="override the preset's training images")
    parser.add_argument("--test-images", type=int, help="override the preset's test images")
    parser.add_argument("--monitor-samples", type=int,
                        help="override the InvarianceMonitor's num_samples (images per split it measures each epoch)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the data, or a folder holding data/<name>/ (default: $INVARIANCE_DATA_DIR for CIFAR "
                        "when set, else ../shared beside the repository when it has the data, else the config's)")
    parser.add_argument("--output", type=Path, default=None, help="default: results/compare_<family>_<preset>")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="training runs go to <runs-dir>/<family>/<config name> (default: runs for --preset "
                        "full, the configs' own run folders; <output>/runs otherwise)")
    parser.add_argument("--reuse", action="store_true",
                        help="use runs whose last.ckpt covers the epochs; resume runs stopped before their "
                        "max_epochs (--ckpt_path last)")
    parser.add_argument("--no-wandb", action="store_true", help="CSV logs only, no W&B runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test subset (default: 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="frames per evaluation forward pass (default: 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


@dataclass
class EvaluationData:
    """The images every variant is evaluated on, and how the training data is overridden."""

    images: Tensor
    labels: Tensor
    normalization: Normalization  # the datamodule's (mean, std)
    overrides: dict[str, Any]  # datamodule arguments for the CLI
    preset: Preset  # with train_subset and test_images dropped where the split is smaller


def prepare_data(args: argparse.Namespace, preset: Preset, config: Mapping[str, Any]) -> EvaluationData:
    """Find the data (before anything trains), choose the test images and the training-data overrides."""
    location = data_location(args.family, args.data_dir, config)
    overrides: dict[str, Any] = {} if location is None else {FAMILIES[args.family].data_key: str(location)}
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
    images, labels = datamodule.split_arrays("test", count, seed=args.seed)
    return EvaluationData(images, labels, (tuple(datamodule.mean), tuple(datamodule.std)), overrides, preset)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Path]]:
    """Parsed and checked arguments with the output folders filled in, and the chosen variants' configs."""
    args = parser.parse_args(argv)
    for option in ("epochs", "train_subset", "test_images", "monitor_samples", "batch_size", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    try:
        variants = resolve_variants(args.family, args.variants)
    except ValueError as error:
        parser.error(str(error))
    args.output = args.output or Path("results") / f"compare_{args.family}_{args.preset}"
    args.runs_dir = args.runs_dir or (Path("runs") if args.preset == "full" else args.output / "runs")
    return args, variants


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the comparison; returns the path of ``comparison.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, variants = parse_args(parser, argv)
    started, load_start = time.perf_counter(), _load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    preset = replace(preset, max_epochs=args.epochs or preset.max_epochs,
                     train_subset=args.train_subset or preset.train_subset,
                     test_images=args.test_images or preset.test_images)
    if args.monitor_samples:
        preset = replace(preset, monitor={**preset.monitor, "num_samples": args.monitor_samples})
    first = yaml.safe_load(next(iter(variants.values())).read_text())
    data = prepare_data(args, preset, first)
    runs = [plan_variant(variant, path, args, data.preset, data.overrides) for variant, path in variants.items()]
    actions, problems = {}, []
    for run in runs:
        try:
            actions[run.variant] = training_action(run, args.reuse)
        except ValueError as error:
            problems.append(f"{run.variant}: {error}")
    if problems:
        parser.error("\n".join(problems) + "\n(or choose another --runs-dir / --output)")

    sequences = sequence_preset("report")
    setup: dict[str, Any] = {
        "family": args.family, "variants": list(variants), "preset": args.preset, "smoke": preset.smoke,
        "preset_description": describe(data.preset), "test_images": len(data.labels), "seed": args.seed,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "command": "python recipes/compare.py " + shlex.join(argv), "load_start": load_start,
        "sequences": {name: repr(sequence) for name, sequence in sequences.items()}, "seconds_per_variant": {},
    }
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, Tensor]]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        tick = time.perf_counter()
        train(run, actions[run.variant])
        trained = time.perf_counter()
        results[run.variant] = evaluate(run, data.images, data.labels, sequences, args.batch_size, data.normalization)
        saved = read_checkpoint(run.checkpoint)
        histories[run.variant] = saved[1]
        rows.append(table_row(run, results[run.variant], saved, len(data.labels), actions[run.variant], args.preset))
        setup["seconds_per_variant"][run.variant] = {"training": trained - tick,
                                                     "evaluation": time.perf_counter() - trained}
        setup.update(load_end=_load_average(), seconds=time.perf_counter() - started)
        write_tables(args.output, rows, results, sequences, setup)
        print(f"== {run.variant}: " + ", ".join(f"{k} {_cell(v, k)}" for k, v in rows[-1].items()
                                                 if isinstance(v, float)), flush=True)
    plots = write_plots(args.output, rows, results, sequences, histories)
    if not args.no_wandb:
        configure_wandb_mode()
        project = (first["trainer"].get("logger") or {}).get("init_args", {}).get("project", "invariance-lightning")
        log_to_wandb(args.output.name, project, args.output, rows, plots, setup)
    print(f"comparison written to {args.output / 'comparison.md'}")
    return args.output / "comparison.md"


def describe(preset: Preset) -> str:
    """The preset's sizes in words."""
    epochs = "the configs' epochs" if preset.max_epochs is None else f"{preset.max_epochs} epoch(s)"
    train = "the whole training split" if preset.train_subset is None else f"{preset.train_subset} training images"
    parts = [f"{epochs} on {train}"]
    for what, arguments in (("trainer", preset.trainer), ("data", preset.data), ("monitor", preset.monitor)):
        if arguments:
            parts.append(f"{what} " + " ".join(f"{key}={value}" for key, value in arguments.items()))
    parts.append("all test images" if preset.test_images is None else f"{preset.test_images} test images")
    return ", ".join(parts)


def _load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as error:  # missing data: the datamodule's message says where it looked and what to do
        sys.exit(f"compare.py: error: {error}")
