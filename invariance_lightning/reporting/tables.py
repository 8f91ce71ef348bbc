"""Turn invariance results (``{sequence name: metric dict}``) into JSON-ready dicts and Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from invariance_lightning.transforms import TransformSequence

#: Scalar columns of summary tables, in order (absent ones are skipped).
SUMMARY_METRICS = ("accuracy", "worst_case_accuracy", "flip_rate", "consistency", "mac", "top5_distance")


def results_to_dict(
    results: Mapping[str, Mapping[str, Tensor]], sequences: Mapping[str, TransformSequence]
) -> dict[str, Any]:
    """Plain numbers and lists for every sequence: its description, frames and metric values."""
    out: dict[str, Any] = {}
    for name, metrics in results.items():
        sequence = sequences[name]
        out[name] = {
            "sequence": repr(sequence),
            "frame_labels": sequence.frame_labels,
            "frame_values": sequence.frame_values,
            "metrics": {key: value.tolist() for key, value in metrics.items()},
        }
    return out


def _cell(value: Any) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def summary_markdown(results: Mapping[str, Mapping[str, Tensor]]) -> str:
    """One row per sequence, one column per scalar metric."""
    metrics = [m for m in SUMMARY_METRICS if any(m in r for r in results.values())]
    lines = ["| sequence | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in results.items():
        cells = [_cell(float(values[m])) if m in values else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_frame_markdown(metrics: Mapping[str, Tensor], sequence: TransformSequence) -> str:
    """Per-frame accuracy and the flip rate from the previous frame, one row per frame."""
    accuracy = metrics.get("per_frame_accuracy")
    flips = [math.nan] + metrics["per_frame_flip_rate"].tolist()
    lines = ["| frame | accuracy | flip rate from previous |", "|---|---:|---:|"]
    for t, label in enumerate(sequence.frame_labels):
        acc = "" if accuracy is None else _cell(float(accuracy[t]))
        flip = "" if t == 0 else _cell(flips[t])
        lines.append(f"| {label} | {acc} | {flip} |")
    return "\n".join(lines)


def report_markdown(
    results: Mapping[str, Mapping[str, Tensor]],
    sequences: Mapping[str, TransformSequence],
    title: str,
    notes: str = "",
) -> str:
    """A Markdown report: summary table, then a per-frame table for each sequence."""
    parts = [f"# {title}", notes, "## Summary", summary_markdown(results)]
    for name, metrics in results.items():
        parts += [f"## {name}", f"`{sequences[name]!r}`", per_frame_markdown(metrics, sequences[name])]
    return "\n\n".join(p for p in parts if p) + "\n"
