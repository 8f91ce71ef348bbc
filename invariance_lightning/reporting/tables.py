"""Turn invariance results (``{sequence name: metric dict}``) into JSON-ready dicts and Markdown tables.

The recipes' own reports build on these: ``reporting.comparison`` (the comparison of trained variants) and
``reporting.paper`` (the Azulay & Weiss measurements).
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from invariance_lightning.metrics.protocols import PROTOCOLS
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


def format_cell(value: Any, digits: int = 4, missing: str = "nan") -> str:
    """A table cell: a float with ``digits`` decimals (``missing`` for NaN), anything else as ``str``."""
    if isinstance(value, float):
        return missing if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def json_safe(value: Any) -> Any:
    """A copy for ``json.dumps(..., allow_nan=False)``: NaN/inf become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """``value`` as strict JSON (:func:`json_safe`: NaN and infinities as ``null``), indented by one space."""
    return json.dumps(json_safe(value), indent=1, allow_nan=False)


def write_json(path: Path, value: Any) -> None:
    """Write :func:`to_json` of ``value`` to ``path``."""
    path.write_text(to_json(value))


#: How each sequence mode fills or frames the moved image, in words.
_MODE_WORDS = {
    "zeros": "zero fill",
    "reflect": "mirrored border",
    "circular": "wrap-around",
    "crop": "cropped",
    "mask": "content masked in place",
}


def describe_sequence(sequence: TransformSequence) -> str:
    """A sequence's frames in words, read from the sequence itself: ``9 frames (0, 0), (1, 1), ..., (8, 8), zero
    fill``."""
    labels = sequence.frame_labels
    shown = ", ".join(labels) if len(labels) <= 3 else f"{labels[0]}, {labels[1]}, ..., {labels[-1]}"
    words = f"{len(sequence)} frames {shown}, {_MODE_WORDS.get(sequence.mode, sequence.mode)}"
    if sequence.embed is not None:
        words += f", the image shrunk to {sequence.embed:g} of its size on a canvas"
    return words


def summary_markdown(results: Mapping[str, Mapping[str, Tensor]]) -> str:
    """One row per sequence, one column per scalar metric."""
    metrics = [m for m in SUMMARY_METRICS if any(m in r for r in results.values())]
    lines = ["| sequence | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in results.items():
        cells = [format_cell(float(values[m])) if m in values else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_frame_markdown(metrics: Mapping[str, Tensor], sequence: TransformSequence) -> str:
    """Per-frame accuracy and the flip rate from the previous frame, one row per frame."""
    accuracy = metrics.get("per_frame_accuracy")
    flips = [math.nan, *metrics["per_frame_flip_rate"].tolist()]
    lines = ["| frame | accuracy | flip rate from previous |", "|---|---:|---:|"]
    for t, label in enumerate(sequence.frame_labels):
        acc = "" if accuracy is None else format_cell(float(accuracy[t]))
        flip = "" if t == 0 else format_cell(flips[t])
        lines.append(f"| {label} | {acc} | {flip} |")
    return "\n".join(lines)


ProtocolResults = Mapping[str, Mapping[str, float]]


def protocol_numbers(numbers: Mapping[str, float]) -> dict[str, float]:
    """A protocol's numbers without its image count."""
    return {key: value for key, value in numbers.items() if key != "num_images"}


def protocol_line(name: str, numbers: Mapping[str, float]) -> str:
    """One console line of a published protocol's numbers, e.g. ``"aps2021_standard   consistency 0.9490"``."""
    return f"{name:18s} " + "  ".join(f"{key} {value:.4f}" for key, value in protocol_numbers(numbers).items())


def protocols_to_dict(protocols: ProtocolResults, seed: int) -> dict[str, Any]:
    """Each published protocol's numbers with its citation, description and the seed of its random shifts."""
    return {
        name: {
            "citation": PROTOCOLS[name].citation,
            "description": PROTOCOLS[name].description,
            "seed": seed,
            "results": dict(numbers),
        }
        for name, numbers in protocols.items()
    }


def protocols_markdown(protocols: ProtocolResults, seed: int) -> str:
    """The "Published protocols" section: one row per protocol (its numbers, its citation)."""
    lines = [
        "## Published protocols",
        f"`invariance_lightning.metrics.protocols` (docs/metrics.md), random shifts seeded by {seed}.",
        "",
        "| protocol | images | numbers | citation |",
        "|---|---:|---|---|",
    ]
    for name, numbers in protocols.items():
        cells = ", ".join(f"{key} {format_cell(value)}" for key, value in protocol_numbers(numbers).items())
        lines.append(f"| {name} | {int(numbers['num_images'])} | {cells} | {PROTOCOLS[name].citation} |")
    return "\n".join(lines)


def report_markdown(
    results: Mapping[str, Mapping[str, Tensor]],
    sequences: Mapping[str, TransformSequence],
    title: str,
    notes: str = "",
    protocols: ProtocolResults | None = None,
    protocol_seed: int = 0,
) -> str:
    """A Markdown report: summary table, the published protocols (if any), then a per-frame table per sequence."""
    parts = [f"# {title}", notes, "## Summary", summary_markdown(results)]
    if protocols:
        parts.append(protocols_markdown(protocols, protocol_seed))
    for name, metrics in results.items():
        parts += [f"## {name}", f"`{sequences[name]!r}`", per_frame_markdown(metrics, sequences[name])]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report(
    folder: Path,
    stem: str,
    payload: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Tensor]],
    sequences: Mapping[str, TransformSequence],
    title: str,
    notes: str = "",
    protocols: ProtocolResults | None = None,
    protocol_seed: int = 0,
) -> Path:
    """Write ``{stem}.json`` (``payload``, the results and, if any, the published ``protocols``' numbers under
    ``"protocols"``) and ``{stem}.md`` (:func:`report_markdown`) into ``folder`` (created if missing); returns the
    Markdown file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {**payload, "results": results_to_dict(results, sequences)}
    if protocols:
        document["protocols"] = protocols_to_dict(protocols, protocol_seed)
    write_json(folder / f"{stem}.json", document)
    markdown = folder / f"{stem}.md"
    markdown.write_text(report_markdown(results, sequences, title, notes, protocols, protocol_seed))
    return markdown


#: Names that moved to the recipes' report modules, still importable from here (deprecated).
_MOVED = {
    **dict.fromkeys(
        (
            "COMPARISON_COLUMNS",
            "INTERVAL_COLUMNS",
            "comparison_columns",
            "comparison_cell",
            "interval_markdown",
            "comparison_markdown",
            "write_comparison",
        ),
        "invariance_lightning.reporting.comparison",
    ),
    **dict.fromkeys(
        ("PAPER_PROTOCOL_NOTES", "PAPER_DEFINITIONS", "gap_markdown", "paper_report_markdown"),
        "invariance_lightning.reporting.paper",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"invariance_lightning.reporting.tables.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
