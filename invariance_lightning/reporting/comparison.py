"""The comparison of trained variants (``recipes/compare.py``): its columns and ``comparison.{csv,md,json}``.

The table's columns are defined here and nowhere else: ``invariance_lightning.lightning.comparison`` fills its rows
from :data:`SEQUENCE_METRICS`, :data:`MONITORED_COLUMNS` and :data:`LOGGED_COLUMNS` through
:func:`sequence_column`, and the tables below read :data:`COMPARISON_COLUMNS`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from invariance_lightning.metrics.gap import wilson_interval
from invariance_lightning.reporting.tables import describe_sequence, format_cell, results_to_dict, write_json
from invariance_lightning.transforms import TransformSequence, sequence_preset

#: The sequence preset every variant is evaluated with: one table column per sequence and metric.
EVALUATION_PRESET = "report"
#: Scalars of each evaluated sequence copied into the table (column ``<sequence>_<metric>``), with their header.
SEQUENCE_METRICS = {"flip_rate": "flip", "consistency": "cons.", "mac": "MAC", "worst_case_accuracy": "worst acc"}
#: ``InvarianceMonitor`` values (logged as ``invariance/<key>``) read from its last measurement saved in
#: ``last.ckpt`` (the checkpoint has them whichever logger the run used): ``{key: (column, header)}``.
MONITORED_COLUMNS = {
    "train/shift/flip_rate": ("monitor_train_shift_flip_rate", "train flip (monitor)"),
    "val/shift/flip_rate": ("monitor_val_shift_flip_rate", "val flip (monitor)"),
}
#: ``metrics.csv`` columns read from the last logged epoch: ``{key: (column, header)}``.
LOGGED_COLUMNS = {"train/images_per_second": ("train_images_per_second", "train img/s")}


def sequence_column(sequence: str, metric: str) -> str:
    """The column of a sequence's metric: ``<sequence>_<metric>``."""
    return f"{sequence}_{metric}"


#: Columns of ``comparison.csv``, in order, with their headers in ``comparison.md`` (None: CSV only).
COMPARISON_COLUMNS: dict[str, str | None] = {
    "variant": "variant",
    "test_accuracy": "test acc",
    **{
        sequence_column(name, metric): f"{name} {header}"
        for name in sequence_preset(EVALUATION_PRESET)
        for metric, header in SEQUENCE_METRICS.items()
    },
    **dict(MONITORED_COLUMNS.values()),
    **dict(LOGGED_COLUMNS.values()),
    "epochs": "epochs",
    "test_images": None,
    "training": "training",
    "preset": None,
    "config": None,
    "checkpoint": None,
    "command": None,
}
#: The first column after those of the sequences and the published protocols.
_AFTER_PROTOCOLS = next(iter(MONITORED_COLUMNS.values()))[0]
#: Decimals of the comparison columns that do not show 4.
_COMPARISON_DIGITS = {LOGGED_COLUMNS["train/images_per_second"][0]: 1}
#: Rate columns of the comparison that get a confidence interval (besides every published-protocol column).
INTERVAL_COLUMNS = (
    "test_accuracy",
    "shift_flip_rate",
    "shift_consistency",
    "shift_worst_case_accuracy",
    "scale_flip_rate",
    "scale_worst_case_accuracy",
)


def comparison_definitions(sequences: Mapping[str, TransformSequence], monitor_shift: TransformSequence) -> str:
    """The "Definitions" section of ``comparison.md``: each evaluated sequence and the monitor's shift sequence
    (``monitor_shift``) are described from the sequence objects themselves."""
    shift = sequences.get("shift")
    unshifted = f" (frame {shift.frame_labels[0]} of the shift sequence)" if shift is not None else ""
    described = "; ".join(f"**{name}**: {describe_sequence(sequence)}" for name, sequence in sequences.items())
    return f"""\
- **test acc**: top-1 accuracy on the unshifted test images{unshifted}.
- **flip**: P(top-1 prediction changes between consecutive frames); **cons.**: fraction of all frame pairs with the
  same prediction; **MAC**: mean absolute change of the previous frame's top-1 probability between consecutive
  frames; **worst acc**: fraction of images classified correctly in every frame.
- {described}.
- **`<protocol>_<number>`** (with `--protocols`): a published protocol's number on the same test images
  (`invariance_lightning.metrics.protocols`, docs/metrics.md), its random shifts seeded by `--seed`.
- **train/val flip (monitor)**: shift flip rate that `InvarianceMonitor` measured in the last trained epoch on its
  fixed training-subset and validation-subset images ({describe_sequence(monitor_shift)}), as saved in
  `last.ckpt` (the values it logs as `invariance/{{train,val}}/shift/flip_rate`).
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


def comparison_markdown(
    rows: Sequence[Mapping[str, Any]],
    setup: Mapping[str, Any],
    sequences: Mapping[str, TransformSequence] | None = None,
    monitor_shift: TransformSequence | None = None,
) -> str:
    """``comparison.md``: the setup (smoke runs labelled), the table, plots, commands and definitions.

    ``rows`` have the :func:`comparison_columns`; ``setup`` holds ``family``, ``preset``, ``smoke``,
    ``preset_description``, ``test_images``, ``seed``, ``device``, ``threads``, ``cpus``, ``machine``,
    ``load_start``, ``load_end``, ``seconds`` and ``command``. ``sequences`` (default
    ``sequence_preset("report")``) are the evaluated ones, ``monitor_shift`` (default the shift of
    ``sequence_preset("monitor")``) the ``InvarianceMonitor``'s: the definitions describe them.
    """
    sequences = sequence_preset(EVALUATION_PRESET) if sequences is None else sequences
    monitor_shift = sequence_preset("monitor")["shift"] if monitor_shift is None else monitor_shift
    columns = comparison_columns(rows)
    shown = [column for column, header in columns.items() if header]
    numeric = [bool(rows) and isinstance(rows[0][c], (int, float)) for c in shown]
    table = [
        "| " + " | ".join(str(columns[c]) for c in shown) + " |",
        "|" + "".join("---:|" if n else "---|" for n in numeric),
    ]
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
        *(f"![{name}: per-frame accuracy and flip rate]({name}_per_frame.png)" for name in sequences),
        "## Commands",
        "```bash\n" + "\n".join([setup["command"], *(row["command"] for row in rows)]) + "\n```",
        "Each variant trains on a copy of its config (`compare_config.yaml` in its run directory) whose run "
        "directory is moved under the comparison's runs folder.",
        "## Definitions",
        comparison_definitions(sequences, monitor_shift),
    ]
    return "\n\n".join(parts) + "\n"


def write_comparison(
    output: Path,
    rows: Sequence[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    sequences: Mapping[str, TransformSequence],
    setup: Mapping[str, Any],
    monitor_shift: TransformSequence | None = None,
) -> None:
    """Write ``comparison.csv``, ``.md`` (:func:`comparison_markdown`) and ``.json`` (the setup, the rows and every
    variant's ``results``)."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / "comparison.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(comparison_columns(rows)))
        writer.writeheader()
        writer.writerows(rows)
    (output / "comparison.md").write_text(comparison_markdown(rows, setup, sequences, monitor_shift))
    payload = {
        "setup": setup,
        "rows": rows,
        "results": {variant: results_to_dict(r, sequences) for variant, r in results.items()},
    }
    write_json(output / "comparison.json", payload)
