"""Torch-only reporting of the recipes: the train-vs-test gap and its bound, the comparison tables, the figures."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from invariance_lightning import ScaleSequence, ShiftSequence
from invariance_lightning.metrics.gap import sampling_bound, train_test_gap, wilson_interval
from invariance_lightning.reporting.comparison import (
    COMPARISON_COLUMNS,
    comparison_markdown,
    interval_markdown,
    write_comparison,
)
from invariance_lightning.reporting.figures import (
    flip_rate_by_sequence_figure,
    monitor_history_figure,
    save_figures,
    train_test_figure,
)
from invariance_lightning.reporting.machine import load_average, machine_info
from invariance_lightning.reporting.paper import gap_markdown, protocol_note
from invariance_lightning.reporting.tables import format_cell, json_safe, to_json, write_json
from invariance_lightning.transforms import sequence_preset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(flip_rate: float, worst: float, accuracy: float) -> dict[str, torch.Tensor]:
    return {
        "flip_rate": torch.tensor(flip_rate),
        "worst_case_accuracy": torch.tensor(worst),
        "accuracy": torch.tensor(accuracy),
        "per_frame_flip_rate": torch.tensor([flip_rate, flip_rate]),
    }


def test_train_test_gap_by_hand():
    assert sampling_bound(0.5, 100) == pytest.approx(0.05)  # sqrt(0.25 / 100)
    assert sampling_bound(0.0, 7) == 0.0
    with pytest.raises(ValueError, match="^sampling_bound: n must be an int >= 1, got 0$"):
        sampling_bound(0.5, 0)
    results = {"train": {"shift": metrics(0.5, 0.9, 0.84)}, "test": {"shift": metrics(0.8, 0.9, 0.75)}}
    gap = train_test_gap(results, {"train": 100, "test": 400})
    flip = gap["shift"]["flip_rate"]
    # bounds sqrt(.25/100) = .05 and sqrt(.16/400) = .02, in quadrature: sqrt(.0029); twice that
    assert flip["bound"] == pytest.approx(2 * math.sqrt(0.0029))
    assert flip["difference"] == pytest.approx(0.3) and flip["significant"] is True
    same = gap["shift"]["worst_case_accuracy"]
    assert same["difference"] == pytest.approx(0.0) and same["significant"] is False
    # accuracy: .84 vs .75, bounds sqrt(.1344/100) and sqrt(.1875/400): 2 * sqrt(.001344 + .00046875) = .0851
    accuracy = gap["shift"]["accuracy"]
    assert accuracy["bound"] == pytest.approx(0.08515, abs=1e-5) and accuracy["significant"] is True
    assert list(gap["shift"]) == ["flip_rate", "worst_case_accuracy", "accuracy"]
    table = gap_markdown(gap)
    assert "| shift | flip rate | 0.5000 | 0.8000 | +0.3000 | 0.1077 | yes |" in table
    with pytest.raises(ValueError, match="missing \\['train'\\]"):
        train_test_gap({"test": results["test"]}, {"test": 400})


def row(variant: str, flip: float, accuracy: float, speed: float) -> dict:
    values = {column: 0.5 for column in COMPARISON_COLUMNS}
    values.update(
        variant=variant,
        shift_flip_rate=flip,
        scale_flip_rate=flip / 2,
        test_accuracy=accuracy,
        train_images_per_second=speed,
        monitor_train_shift_flip_rate=math.nan,
        epochs=3,
        test_images=8,
        training="trained",
        preset="tiny",
        config="c.yaml",
        checkpoint="runs/x/last-checkpoint",
        command=f"invariance-lightning fit {variant}",
    )
    return values


SETUP = {
    "family": "cifar10",
    "preset": "tiny",
    "smoke": True,
    "preset_description": "1 epoch(s)",
    "test_images": 8,
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "cpus": 2,
    "machine": "x86_64",
    "load_start": "1.0",
    "load_end": "2.0",
    "seconds": 12.0,
    "command": "python recipes/compare.py --preset tiny",
}


def test_comparison_files_hold_the_rows_with_nan_as_n_a_and_null(tmp_path):
    rows = [row("plain", 0.25, 0.5, 81.26), row("blur", 0.125, 0.625, 70.0)]
    sequences = {"shift": ShiftSequence(max_shift=1)}
    results = {"plain": {"shift": {"flip_rate": torch.tensor(0.25), "per_frame_flip_rate": torch.tensor([0.25])}}}
    write_comparison(tmp_path / "out", rows, results, sequences, {**SETUP, "nan": math.nan})
    with (tmp_path / "out" / "comparison.csv").open(newline="") as file:
        read = list(csv.DictReader(file))
    assert list(read[0]) == list(COMPARISON_COLUMNS) and [r["variant"] for r in read] == ["plain", "blur"]
    assert read[0]["train_images_per_second"] == "81.26" and read[0]["monitor_train_shift_flip_rate"] == "nan"
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert markdown == comparison_markdown(rows, {**SETUP, "nan": math.nan}, sequences)
    assert markdown.startswith("# Invariance comparison: cifar10 variants (SMOKE RUN, preset tiny)")
    # shown columns only; 4 decimals, images per second with 1, NaN as n/a
    assert "| plain | 0.5000 | 0.2500 | 0.5000 |" in markdown and "| n/a | 0.5000 | 81.3 | 3 | trained |" in markdown
    assert "runs/x/last-checkpoint" not in markdown and "invariance-lightning fit blur" in markdown
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert payload["rows"][0]["monitor_train_shift_flip_rate"] is None and payload["setup"]["nan"] is None
    assert payload["results"]["plain"]["shift"]["metrics"]["flip_rate"] == 0.25


def test_wilson_interval_by_hand():
    # 0 of 10: centre = half = (z^2 / 20) / (1 + z^2 / 10) = 0.19208 / 1.38416
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(2 * 0.19208 / 1.38416, abs=1e-9)
    # 9,000 of 10,000: 0.9 +- 1.96 sqrt(0.09 / 1e4 + 3.8416 / 4e8) / 1.00038416 around (0.9 + 1.9208e-4) / 1.00038416
    centre, half = (0.9 + 1.9208e-4) / 1.00038416, 1.96 * math.sqrt(9e-6 + 9.604e-9) / 1.00038416
    assert wilson_interval(0.9, 10_000) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(1.0, 5)[1] == 1.0
    for bad, message in (
        ((0.5, 0), "^wilson_interval: n must be an int >= 1, got 0$"),
        ((1.5, 10), "^wilson_interval: p must be a finite number >= 0 and <= 1, got 1.5$"),
    ):
        with pytest.raises(ValueError, match=message):
            wilson_interval(*bad)


def test_interval_table_shows_each_rate_with_its_interval_over_the_test_images():
    rows = [{**row("plain", 0.0, 1.0, 9.0), "zhang2019_consistency": 0.5}]  # a published-protocol column too
    table = interval_markdown(rows).splitlines()
    assert table[0] == (
        "| variant | test acc | shift flip | shift cons. | shift worst acc | scale flip | "
        "scale worst acc | zhang2019_consistency |"
    )
    low, high = wilson_interval(0.5, 8)  # every row has test_images=8
    cells = table[2].split(" | ")
    assert cells[1].startswith("1.0000 [") and cells[2] == f"0.0000 [0.0000, {wilson_interval(0.0, 8)[1]:.4f}]"
    assert cells[-1] == f"0.5000 [{low:.4f}, {high:.4f}] |"
    assert interval_markdown(rows) in comparison_markdown(rows, SETUP)


def test_cells_and_json_safe_values():
    assert format_cell(0.123456) == "0.1235" and format_cell(math.nan) == "nan" and format_cell(3) == "3"
    assert format_cell(81.26, 1, missing="n/a") == "81.3" and format_cell(math.nan, missing="n/a") == "n/a"
    assert json_safe({1: (math.inf, 0.5), "a": [math.nan, "x"]}) == {"1": [None, 0.5], "a": [None, "x"]}


def test_monitor_history_figure_draws_each_models_values_per_epoch():
    histories = {
        "plain": [
            {"epoch": 0, "values": {"val/shift/flip_rate": 0.3, "train/shift/flip_rate": 0.2}},
            {"epoch": 2, "values": {"val/shift/flip_rate": 0.1, "train/shift/flip_rate": 0.05}},
        ],
        "blur": [{"epoch": 1, "values": {"val/shift/flip_rate": 0.25}}],  # no train split measured
        "none": [],  # a run without a monitor draws nothing
    }
    figure = monitor_history_figure(histories, ["train/shift/flip_rate", "val/shift/flip_rate"])
    train_ax, val_ax = figure.axes
    assert (train_ax.get_title(), val_ax.get_title()) == (
        "monitor: train/shift/flip_rate",
        "monitor: val/shift/flip_rate",
    )
    assert [line.get_label() for line in train_ax.lines] == ["plain"]
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in val_ax.lines] == [
        ("plain", [0, 2], [0.3, 0.1]),
        ("blur", [1], [0.25]),
    ]


def test_flip_rate_and_train_test_figures_draw_the_numbers(tmp_path):
    sequences = {
        "zeros": ShiftSequence(max_shift=2),
        "circular": ShiftSequence(max_shift=2, mode="circular"),
        "scale": ScaleSequence([0.9, 1.0, 1.1]),
    }
    results = {name: {"per_frame_flip_rate": torch.tensor([0.25 * i, 0.5])} for i, name in enumerate(sequences)}
    figure = flip_rate_by_sequence_figure(sequences, results, "test images")
    shift_ax, scale_ax = figure.axes
    assert [line.get_label() for line in shift_ax.lines] == ["zeros", "circular"]
    assert list(shift_ax.lines[1].get_ydata()) == [0.25, 0.5] and list(scale_ax.lines[0].get_ydata()) == [0.5, 0.5]
    assert list(scale_ax.lines[0].get_xdata()) == [1.0, 1.1]  # the factor each step arrives at

    split_results = {"train": {"s": metrics(0.5, 0.9, 0.84)}, "test": {"s": metrics(0.8, 0.9, 0.75)}}
    counts = {"train": 100, "test": 400}
    figure = train_test_figure(train_test_gap(split_results, counts), counts)
    flip_ax = figure.axes[0]
    heights = [patch.get_height() for patch in flip_ax.patches]
    assert flip_ax.get_title() == "flip rate" and heights == pytest.approx([0.5, 0.8])
    error_bars = [container for container in flip_ax.containers if hasattr(container, "has_yerr")]
    segments = [c.lines[2][0].get_segments()[0] for c in error_bars]  # each bar's error line (x, y0) - (x, y1)
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([4 * 0.05, 4 * 0.02])  # +- 2 bounds
    (path,) = save_figures(tmp_path, {"train_vs_test": figure})
    assert path == tmp_path / "train_vs_test.png" and path.read_bytes()[:8] == PNG_MAGIC


def test_write_png_writes_what_savefig_writes_drawing_each_figure_once(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from invariance_lightning.reporting.figures import flip_grid_figure, write_png

    sequence = ShiftSequence(2)  # (0, 0), (1, 1), (2, 2)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=generator)
    predictions = torch.tensor([[0, 1, 0], [2, 2, 2], [1, 0, 1], [3, 3, 4]])

    def grid() -> Figure:
        names = ["a", "b", "c", "d", "e"]
        return flip_grid_figure(images, predictions, sequence, names, targets=torch.tensor([0, 2, 1, 3]))

    expected, written = tmp_path / "savefig.png", tmp_path / "write_png.png"
    grid().savefig(expected)
    figure = grid()
    canvas = figure.canvas
    draws = []
    original_draw = FigureCanvasAgg.draw
    monkeypatch.setattr(FigureCanvasAgg, "draw", lambda self: draws.append(1) or original_draw(self))
    write_png(figure, written)
    assert len(draws) == 1 and figure.canvas is canvas  # one draw (savefig: a layout pass and a draw); canvas kept
    with Image.open(expected) as a, Image.open(written) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.info == b.info
    # drawn already on an Agg canvas (as TensorBoard's add_figure does) and unchanged: written without drawing again
    drawn = grid()
    FigureCanvasAgg(drawn).draw()
    write_png(drawn, tmp_path / "again.png")
    assert len(draws) == 2
    with Image.open(expected) as a, Image.open(tmp_path / "again.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_flip_grid_shows_the_frames_the_model_was_given():
    pytest.importorskip("matplotlib")
    from invariance_lightning.reporting.figures import flip_grid_figure

    sequence = ShiftSequence(2, mode="zeros")  # (0, 0), (1, 1), (2, 2) with black fill
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    predictions = torch.tensor([[0, 1, 0], [2, 2, 2]])
    figure = flip_grid_figure(images, predictions, sequence)
    for t in range(3):
        shown = torch.as_tensor(figure.axes[t].images[0].get_array()).permute(2, 0, 1)
        torch.testing.assert_close(shown.float(), sequence.frame(images[:1], t)[0], atol=1e-6, rtol=0)
    # images outside [0, 1] (normalized in a way nobody said): shifted as given, so the vacated border shows the
    # value 0 of the data, scaled for display with the rest of the strip, not black
    centred = images * 2 - 1
    figure = flip_grid_figure(centred, predictions, sequence)
    shifted = torch.as_tensor(figure.axes[2].images[0].get_array())
    strip = torch.stack([sequence.frame(centred[:1], t)[0] for t in range(3)])
    zero_shown = (0 - strip.min()) / (strip.max() - strip.min())
    assert float(shifted[0, 0, 0]) == pytest.approx(float(zero_shown), abs=1e-6) and float(zero_shown) > 0.3


def test_comparison_definitions_describe_the_sequences_they_are_given():
    sequences = {"shift": ShiftSequence(max_shift=5, mode="circular"), "zoom": ScaleSequence([0.5, 2.0])}
    monitor_shift = ShiftSequence(max_shift=2, mode="reflect")
    markdown = comparison_markdown([row("plain", 0.25, 0.5, 8.0)], SETUP, sequences, monitor_shift)
    definitions = markdown.split("## Definitions")[1]
    assert "**shift**: 6 frames (0, 0), (1, 1), ..., (5, 5), wrap-around" in definitions
    assert "**zoom**: 2 frames x0.5, x2, zero fill" in definitions
    assert "images (3 frames (0, 0), (1, 1), (2, 2), mirrored border)" in definitions
    assert "(8, 8)" not in definitions and "(3, 3)" not in definitions and "9 frames" not in definitions
    assert "![zoom: per-frame accuracy and flip rate](zoom_per_frame.png)" in markdown
    assert "scale_per_frame.png" not in markdown


def test_comparison_definitions_default_to_the_report_and_monitor_presets():
    definitions = comparison_markdown([row("plain", 0.25, 0.5, 8.0)], SETUP).split("## Definitions")[1]
    report, monitor = sequence_preset("report"), sequence_preset("monitor")["shift"]
    assert f"**shift**: {len(report['shift'])} frames (0, 0), (1, 1), ..., (8, 8), zero fill" in definitions
    assert f"**scale**: {len(report['scale'])} frames x0.8, x0.85, ..., x1.2, zero fill" in definitions
    assert f"images ({len(monitor)} frames (0, 0), (1, 1), ..., (3, 3), zero fill)" in definitions


def test_paper_protocol_lines_follow_the_sequence_and_the_image_size():
    crop = ShiftSequence(max_shift=3, mode="crop", crop_size=40)
    line = protocol_note("shift_crop", crop, (48, 64))
    assert "4 frames (0, 0), (1, 1), ..., (3, 3), cropped" in line
    assert "a 40x40 window moves" in line and "smaller than the 48x64 it was trained on" in line
    assert "32x32" not in line and "24x24" not in line
    scale = protocol_note("scale", ScaleSequence([0.5, 1.0], mode="zeros"), (20, 30))
    assert "2 frames x0.5, x1, zero fill" in scale and "centre crop back to 20x30" in scale
    assert protocol_note("mine", ShiftSequence(max_shift=1), (8, 8)).endswith("2 frames (0, 0), (1, 1), zero fill")


def test_json_helpers_write_strict_json(tmp_path):
    assert to_json({"a": math.nan, "b": (1, 2.5)}) == '{\n "a": null,\n "b": [\n  1,\n  2.5\n ]\n}'
    write_json(tmp_path / "x.json", {"inf": math.inf})
    assert json.loads((tmp_path / "x.json").read_text()) == {"inf": None}


def test_moved_table_names_still_import_from_tables_with_a_deprecation_warning():
    from invariance_lightning.reporting import comparison, paper, tables

    with pytest.warns(DeprecationWarning, match="moved to invariance_lightning.reporting.comparison"):
        assert tables.COMPARISON_COLUMNS is comparison.COMPARISON_COLUMNS
    with pytest.warns(DeprecationWarning, match="reporting.paper.paper_report_markdown"):
        assert tables.paper_report_markdown is paper.paper_report_markdown
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tables.nothing


def test_machine_info_names_this_process():
    info = machine_info()
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    assert info["cpus"] == os.cpu_count() and info["machine"]
    assert load_average() == "n/a" or len(load_average().split(" / ")) == 3


def test_machine_info_names_the_gpu_only_where_cuda_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine_info()["gpu"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert machine_info()["gpu"] == "NVIDIA H200"


def test_the_package_exports_the_generic_tables_and_the_recipes_reports_warn_under_their_old_names():
    import invariance_lightning.reporting as reporting
    from invariance_lightning.reporting import comparison, paper

    assert "write_report" in reporting.__all__ and "comparison_markdown" not in reporting.__all__
    with pytest.warns(DeprecationWarning, match=r"reporting.comparison_markdown is deprecated.*reporting\.comparison"):
        assert reporting.comparison_markdown is comparison.comparison_markdown
    with pytest.warns(DeprecationWarning, match="paper_report_markdown is deprecated"):
        assert reporting.paper_report_markdown is paper.paper_report_markdown
