"""Turn invariance results (``{sequence name: metric dict}``) into JSON-ready dicts, Markdown tables and the
recipes' reports (the comparison of trained variants, the Azulay & Weiss measurements)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from invariance_lightning.diagnostics import EquivarianceReport
from invariance_lightning.metrics.gap import GAP_METRICS, Gap, wilson_interval
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


def protocols_to_dict(protocols: ProtocolResults, seed: int) -> dict[str, Any]:
    """Each published protocol's numbers with its citation, description and the seed of its random shifts."""
    return {
        name: {"citation": PROTOCOLS[name].citation, "description": PROTOCOLS[name].description, "seed": seed,
               "results": dict(numbers)}
        for name, numbers in protocols.items()
    }


def protocols_markdown(protocols: ProtocolResults, seed: int) -> str:
    """The "Published protocols" section: one row per protocol (its numbers, its citation)."""
    lines = ["## Published protocols",
             f"`invariance_lightning.metrics.protocols` (docs/metrics.md), random shifts seeded by {seed}.", "",
             "| protocol | images | numbers | citation |", "|---|---:|---|---|"]
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
    (folder / f"{stem}.json").write_text(json.dumps(json_safe(document), indent=1, allow_nan=False))
    markdown = folder / f"{stem}.md"
    markdown.write_text(report_markdown(results, sequences, title, notes, protocols, protocol_seed))
    return markdown


# -- the comparison of trained variants (recipes/compare.py) --------------------------------------------------------
#: Columns of ``comparison.csv``, in order, with their headers in ``comparison.md`` (None: CSV only).
COMPARISON_COLUMNS: dict[str, str | None] = {
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
#: The first column after those of the sequences and the published protocols.
_AFTER_PROTOCOLS = "monitor_train_shift_flip_rate"
#: Decimals of the comparison columns that do not show 4.
_COMPARISON_DIGITS = {"train_images_per_second": 1}

COMPARISON_DEFINITIONS = """\
- **test acc**: top-1 accuracy on the unshifted test images (frame (0, 0) of the shift sequence).
- **flip**: P(top-1 prediction changes between consecutive frames); **cons.**: fraction of all frame pairs with the
  same prediction; **MAC**: mean absolute change of the previous frame's top-1 probability between consecutive
  frames; **worst acc**: fraction of images classified correctly in every frame.
- **shift**: 9 frames, diagonal 1-px steps from (0, 0) to (8, 8), zero fill; **scale**: 9 frames, factors 0.8 to 1.2
  about the centre, zero padding or centre crop (`sequence_preset("report")`).
- **`<protocol>_<number>`** (with `--protocols`): a published protocol's number on the same test images
  (`invariance_lightning.metrics.protocols`, docs/metrics.md), its random shifts seeded by `--seed`.
- **train/val flip (monitor)**: shift flip rate that `InvarianceMonitor` measured in the last trained epoch on its
  fixed training-subset and validation-subset images (diagonal 1-px steps to (3, 3), zero fill), as saved in
  `last.ckpt` (the values it logs as `invariance/{train,val}/shift/flip_rate`).
- **train img/s**: `train/images_per_second` of the last trained epoch, as `ImageClassifier` logs it: training images
  over the time from the start to the end of the training epoch, which includes data loading, augmentation, the
  epoch's validation and the `InvarianceMonitor` measurement."""


def comparison_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """:data:`COMPARISON_COLUMNS` with the rows' published-protocol columns (``<protocol>_<number>``, any key not in
    :data:`COMPARISON_COLUMNS`, headed by their key) after the sequence columns."""
    base = list(COMPARISON_COLUMNS.items())
    extra = [(column, column) for column in (rows[0] if rows else {}) if column not in COMPARISON_COLUMNS]
    at = list(COMPARISON_COLUMNS).index(_AFTER_PROTOCOLS)
    return dict(base[:at] + extra + base[at:])


def comparison_cell(column: str, value: Any) -> str:
    """A cell of the comparison table (``n/a`` for NaN; images per second with one decimal)."""
    return format_cell(value, _COMPARISON_DIGITS.get(column, 4), missing="n/a")


#: Rate columns of the comparison that get a confidence interval (besides every published-protocol column).
INTERVAL_COLUMNS = ("test_accuracy", "shift_flip_rate", "shift_consistency", "shift_worst_case_accuracy",
                    "scale_flip_rate", "scale_worst_case_accuracy")


def interval_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of each rate with its :func:`~invariance_lightning.metrics.gap.wilson_interval` over the row's
    ``test_images``: the sampling uncertainty of a single training run."""
    columns = comparison_columns(rows)
    shown = [c for c in columns if c in INTERVAL_COLUMNS or c not in COMPARISON_COLUMNS]
    table = ["| variant | " + " | ".join(str(columns[c]) for c in shown) + " |", "|---|" + "---:|" * len(shown)]
    for row in rows:
        cells = []
        for column in shown:
            value = row[column]
            if isinstance(value, float) and 0.0 <= value <= 1.0:
                low, high = wilson_interval(value, int(row["test_images"]))
                cells.append(f"{value:.4f} [{low:.4f}, {high:.4f}]")
            else:
                cells.append(comparison_cell(column, value))
        table.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def comparison_markdown(rows: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> str:
    """``comparison.md``: the setup (smoke runs labelled), the table, plots, commands and definitions.

    ``rows`` have the :func:`comparison_columns`; ``setup`` holds ``family``, ``preset``, ``smoke``,
    ``preset_description``, ``test_images``, ``seed``, ``device``, ``threads``, ``cpus``, ``machine``,
    ``load_start``, ``load_end``, ``seconds`` and ``command``.
    """
    columns = comparison_columns(rows)
    shown = [column for column, header in columns.items() if header]
    numeric = [bool(rows) and isinstance(rows[0][c], (int, float)) for c in shown]
    table = ["| " + " | ".join(str(columns[c]) for c in shown) + " |",
             "|" + "".join("---:|" if n else "---|" for n in numeric)]
    table += ["| " + " | ".join(comparison_cell(c, row[c]) for c in shown) + " |" for row in rows]
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
        "## 95% intervals",
        "Wilson score intervals over the test images: how much each rate could move with another sample of test "
        "images, for this one training run per variant (another training seed moves it further).",
        interval_markdown(rows),
        "![accuracy vs flip rate](accuracy_vs_flip_rate.png)",
        "![InvarianceMonitor flip rates over the epochs](monitor_history.png)",
        "![shift: per-frame accuracy and flip rate](shift_per_frame.png)",
        "![scale: per-frame accuracy and flip rate](scale_per_frame.png)",
        "## Commands",
        "```bash\n" + "\n".join([setup["command"], *(row["command"] for row in rows)]) + "\n```",
        "Each variant trains on a copy of its config (`compare_config.yaml` in its run directory) whose run "
        "directory is moved under the comparison's runs folder.",
        "## Definitions",
        COMPARISON_DEFINITIONS,
    ]
    return "\n\n".join(parts) + "\n"


def write_comparison(
    output: Path,
    rows: Sequence[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    sequences: Mapping[str, TransformSequence],
    setup: Mapping[str, Any],
) -> None:
    """Write ``comparison.csv``, ``.md`` and ``.json`` (the setup, the rows and every variant's ``results``)."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / "comparison.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(comparison_columns(rows)))
        writer.writeheader()
        writer.writerows(rows)
    (output / "comparison.md").write_text(comparison_markdown(rows, setup))
    payload = {
        "setup": setup,
        "rows": rows,
        "results": {variant: results_to_dict(r, sequences) for variant, r in results.items()},
    }
    (output / "comparison.json").write_text(json.dumps(json_safe(payload), indent=1, allow_nan=False))


# -- the Azulay & Weiss measurements (recipes/paper.py) ------------------------------------------------------------
#: What each protocol of ``sequence_preset("paper")`` does (its repr in the report gives the numbers).
PAPER_PROTOCOL_NOTES = {
    "shift_zeros": "the whole image moves diagonally in 1-px steps; vacated pixels are black",
    "shift_crop": "a smaller window moves diagonally over the image (the paper's crop protocol): no invented "
    "pixels, but the model sees inputs smaller than the 32x32 it was trained on",
    "shift_embed": "the image is shrunk (antialiased) onto a black canvas of the original size and moves inside "
    "it (the paper's black-background protocol): every frame shows the whole object",
    "shift_circular": "wrap-around shifts (torch.roll), for reference: no border at all",
    "scale": "rescaled about the centre (bilinear, antialiased when shrinking), black padding or centre crop back "
    "to 32x32; consecutive frames differ by one step of the scale factor",
}

PAPER_DEFINITIONS = """\
- **flip rate**: P(top-1 prediction changes between consecutive frames), over all images and consecutive frame
  pairs (the paper's "P(top-1 change)").
- **MAC**: mean absolute change of the probability of the previous frame's top-1 class between consecutive frames.
- **consistency**: fraction of all frame pairs (not only consecutive ones) with the same top-1 prediction.
- **top5_distance**: mean number of the 5 top-5 rank positions whose class changes between consecutive frames
  (0 to 5).
- **accuracy**: top-1 accuracy averaged over all frames; **worst-case accuracy**: fraction of images classified
  correctly in every frame.
- The ± bound is `2 * sqrt(p (1 - p) / n)` (for a difference, the two combined in quadrature): each image
  contributes a value in [0, 1], whose variance is at most p (1 - p), so this is a conservative ~95% interval for
  sampling images."""


def gap_markdown(gap: Gap) -> str:
    """The train-vs-test table of :func:`~invariance_lightning.metrics.gap.train_test_gap`: one row per sequence
    and metric."""
    lines = ["| protocol | metric | train | test | test - train | ± bound | beyond bound |",
             "|---|---|---:|---:|---:|---:|---|"]
    for protocol, metrics in gap.items():
        for metric, v in metrics.items():
            lines.append(
                f"| {protocol} | {GAP_METRICS[metric]} | {v['train']:.4f} | {v['test']:.4f} | {v['difference']:+.4f} "
                f"| {v['bound']:.4f} | {'yes' if v['significant'] else 'no'} |"
            )
    return "\n".join(lines)


def paper_report_markdown(
    payload: Mapping[str, Any],
    sequences: Mapping[str, TransformSequence],
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    layers: EquivarianceReport,
) -> str:
    """``report.md`` of the Azulay & Weiss measurements: ``results`` by split (``"train"``, ``"test"``) and
    sequence, the per-layer profile, and the settings in ``payload`` (the recipe's ``report.json``: ``model``,
    ``data``, ``settings``, ``seconds``, ``command``, ``train_test_gap`` and ``published_protocols``, whose
    numbers on the test images get a "Published protocols" table)."""
    counts, model = payload["data"]["num_images"], payload["model"]
    interleaved = {f"{name} ({split})": results[split][name] for name in sequences for split in ("train", "test")}
    protocol_lines = [f"- **{name}** (`{sequence!r}`): {PAPER_PROTOCOL_NOTES.get(name, '')}"
                      for name, sequence in sequences.items()]
    parts = [
        f"# Azulay & Weiss (2019) measurements: {model['name']}",
        f"Model `{model['source']}`, inputs normalized with mean {model['normalize'][0]} and std "
        f"{model['normalize'][1]}. Data: {payload['data']['dataset']} from `{payload['data']['source']}`; "
        f"{counts['test']} test and {counts['train']} training images (seeded subsets, seed "
        f"{payload['settings']['seed']}); training images: {payload['data']['train_note']}. Device "
        f"{payload['settings']['device']}, {payload['settings']['threads']} torch threads, "
        f"{payload['seconds']['total']:.0f} s in total.",
        "```\n" + payload["command"] + "\n```",
        "## 1. Shift and scale consistency (test images)",
        "\n".join(protocol_lines),
        summary_markdown(results["test"]),
        "![flip rate per frame](flip_rate_by_protocol.png)",
    ]
    published = payload.get("published_protocols")
    if published:
        numbers = {name: entry["results"] for name, entry in published.items()}
        parts.append(protocols_markdown(numbers, payload["settings"]["seed"]).replace("## ", "### ", 1))
    parts += [
        "## 2. Training vs test images",
        "The paper finds networks more invariant on images like their training set. Same protocols, "
        f"{counts['train']} training vs {counts['test']} test images:",
        summary_markdown(interleaved),
        gap_markdown(payload["train_test_gap"]),
        "![train vs test](train_vs_test.png)",
        "## 3. Per-layer equivariance profile",
        f"{layers.num_images} test images, {layers.mode} diagonal input shifts, border {layers.border} px left out of "
        "the equivariance error (`invariance_lightning.diagnostics.layer_equivariance`; see docs/diagnostics.md). "
        "A layer of cumulative stride k can at best be equivariant to shifts that are multiples of k; n/a marks a "
        "fractional feature shift. Unless the border covers the shift plus the layer's receptive-field radius, the "
        "error of a zero-padded network includes the band where its padding meets the shifted image border "
        "(`--layer-border 8` leaves it out for ResNet-20's layer1).",
        layers.to_markdown(digits=3),
        "![per-layer profile](layer_profile.png)",
        "## Per-frame results",
    ]
    for name, sequence in sequences.items():
        parts += [f"### {name}", f"![{name}](per_frame_{name}.png)", "Test images:",
                  per_frame_markdown(results["test"][name], sequence)]
    parts += ["## Definitions", PAPER_DEFINITIONS]
    return "\n\n".join(parts) + "\n"
