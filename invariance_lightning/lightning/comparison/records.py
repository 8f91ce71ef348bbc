"""What the comparison keeps of each evaluated variant: its table row and its record (``variants/<variant>.json``),
which stands for the run when it was made from the same config, settings and checkpoint (sha256)."""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from invariance_lightning.lightning.checkpoint import CheckpointInfo
from invariance_lightning.lightning.comparison.data import EvaluationData
from invariance_lightning.lightning.comparison.logs import last_logged, last_monitored, monitor_history
from invariance_lightning.lightning.comparison.settings import ComparisonSettings
from invariance_lightning.lightning.comparison.training import VariantRun
from invariance_lightning.reporting.comparison import (
    EVALUATION_PRESET,
    LOGGED_COLUMNS,
    MONITORED_COLUMNS,
    SEQUENCE_METRICS,
    sequence_column,
)
from invariance_lightning.reporting.tables import protocol_numbers, to_json, write_json
from invariance_lightning.transforms import sequence_preset


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
    """One row of the comparison table (see :func:`~invariance_lightning.reporting.comparison.comparison_columns`):
    ``protocols`` are the published protocols' numbers, one column ``<protocol>_<number>`` each."""
    row: dict[str, Any] = {"variant": run.variant, "test_accuracy": float(results["shift"]["per_frame_accuracy"][0])}
    for name, metrics in results.items():
        row.update({sequence_column(name, metric): float(metrics[metric]) for metric in SEQUENCE_METRICS})
    for name, numbers in protocols.items():
        row.update({f"{name}_{key}": value for key, value in protocol_numbers(numbers).items()})
    monitored = last_monitored(monitor_history(saved))
    row.update({column: monitored[key] for key, (column, _) in MONITORED_COLUMNS.items()})
    logged = last_logged(run.run_dir, list(LOGGED_COLUMNS))
    row.update({column: logged[key] for key, (column, _) in LOGGED_COLUMNS.items()})
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
        "sequences": {name: repr(sequence) for name, sequence in sequence_preset(EVALUATION_PRESET).items()},
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
        "results": {
            name: {metric: value.tolist() for metric, value in metrics.items()}
            for name, metrics in record.results.items()
        },
        "history": record.history,
        "log": record.log,
        "seconds": record.seconds,
        "checkpoint_sha256": record.checkpoint_sha256,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    write_json(partial, payload)
    partial.replace(path)


def read_record(path: Path, key: Mapping[str, Any]) -> VariantRecord | None:
    """The record at ``path`` if it exists and was made with ``key`` (:func:`evaluation_key`), else None."""
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if payload.get("evaluation") != json.loads(to_json(key)):
        return None
    row = {key: math.nan if value is None else value for key, value in payload["row"].items()}
    results = {
        name: {metric: torch.tensor(value) for metric, value in metrics.items()}
        for name, metrics in payload["results"].items()
    }
    return VariantRecord(
        row, results, payload["history"], payload["log"], payload["seconds"], payload["checkpoint_sha256"]
    )
