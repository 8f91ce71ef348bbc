"""What a run recorded: the ``InvarianceMonitor`` history in its checkpoint and its ``metrics.csv`` logs."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from invariance_lightning.lightning.checkpoint import CheckpointInfo
from invariance_lightning.lightning.comparison.configs import MONITOR
from invariance_lightning.reporting.comparison import MONITORED_COLUMNS


def monitor_history(checkpoint: CheckpointInfo) -> list[dict[str, Any]]:
    """The InvarianceMonitor's measurement history saved in a checkpoint (rows ``{"epoch", "values"}``; the last
    monitor's that has one, empty without)."""
    histories = [state["history"] for state in checkpoint.callback_states(MONITOR) if state.get("history")]
    return histories[-1] if histories else []


def last_monitored(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The values of :data:`~invariance_lightning.reporting.comparison.MONITORED_COLUMNS` in the last measurement
    of a monitor history (NaN without one)."""
    last = history[-1]["values"] if history else {}
    return {key: float(last.get(key, math.nan)) for key in MONITORED_COLUMNS}


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
