"""Matplotlib figures of invariance measurements (object-oriented API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from invariance_lightning.diagnostics import EquivarianceReport
from invariance_lightning.metrics.gap import GAP_METRICS, Gap, sampling_bound
from invariance_lightning.transforms import ShiftSequence, TransformSequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HISTORY_METRICS = ("flip_rate", "consistency", "mac", "worst_case_accuracy")
#: Images in the grid of the most-flipping images.
FLIP_GRID_IMAGES = 6


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


#: The ``savefig.*`` settings under which :func:`write_png` writes what ``savefig`` would (matplotlib's defaults).
SAVEFIG_DEFAULTS = {"dpi": "figure", "facecolor": "auto", "edgecolor": "auto", "bbox": None, "transparent": False}


def write_png(figure: Figure, path: Path | str) -> None:
    """Write ``figure`` to ``path`` as a PNG, the same pixels and metadata as ``figure.savefig(path)``, drawing it once.

    ``savefig`` draws a figure that has a layout engine (all of ours: constrained layout) twice, a dry run that
    places the axes and then the real one; an Agg canvas lays out and renders in one draw. A figure that was
    already drawn on a plain Agg canvas and has not changed since (``figure.stale`` false, e.g. after TensorBoard's
    ``add_figure``) is not drawn again: its pixels are written as they are.
    """
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imsave

    # rcParams' stubs only take literal keys
    if any(rcParams[f"savefig.{key}"] != value for key, value in SAVEFIG_DEFAULTS.items()):  # type: ignore[index]
        figure.savefig(path, format="png")  # the user's savefig settings change the pixels: let savefig apply them
        return
    canvas = figure.canvas
    if type(canvas) is FigureCanvasAgg:  # not a GUI canvas, which could scale the buffer by its device pixel ratio
        if figure.stale:
            canvas.draw()
        imsave(path, canvas.buffer_rgba(), format="png", origin="upper", dpi=figure.dpi)
        return
    agg = FigureCanvasAgg(figure)
    try:
        agg.draw()
        imsave(path, agg.buffer_rgba(), format="png", origin="upper", dpi=figure.dpi)
    finally:  # as savefig does: the figure keeps its own canvas, and the Agg buffer is freed with ``agg``
        figure.set_canvas(canvas)


def save_figures(folder: Path, figures: Mapping[str, Figure]) -> list[Path]:
    """Save each figure as ``{folder}/{name}.png`` (with :func:`write_png`); returns the paths, in order."""
    paths = []
    for name, figure in figures.items():
        paths.append(folder / f"{name}.png")
        write_png(figure, paths[-1])
    return paths


def per_frame_figure(
    sequence: TransformSequence, metrics_by_split: Mapping[str, Mapping[str, Tensor]], title: str
) -> Figure:
    """Accuracy per frame and flip rate per transition along ``sequence``, one line per split."""
    fig = _figure(9, 3.4)
    acc_ax, flip_ax = fig.subplots(1, 2)
    values = sequence.frame_values
    for split, metrics in metrics_by_split.items():
        if "per_frame_accuracy" in metrics:
            acc_ax.plot(values, metrics["per_frame_accuracy"].tolist(), marker="o", label=split)
        flip_ax.plot(values[1:], metrics["per_frame_flip_rate"].tolist(), marker="o", label=split)
    acc_ax.set(title="accuracy per frame", xlabel=sequence.axis_label, ylabel="accuracy")
    flip_ax.set(
        title="P(top-1 changes from the previous frame)", xlabel=sequence.axis_label, ylabel="flip rate", ylim=(0, None)
    )
    for ax in (acc_ax, flip_ax):
        ax.grid(alpha=0.3)
        if ax.lines and any(metrics_by_split):  # unnamed single series need no legend
            ax.legend()
    fig.suptitle(title)
    return fig


def history_figure(history: Sequence[Mapping], metrics: Sequence[str] = HISTORY_METRICS) -> Figure:
    """Each metric over epochs, one line per ``{split}/{sequence}`` (history rows: ``{"epoch", "values"}``)."""
    fig = _figure(4 * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in history:
        for key, value in row["values"].items():
            *group, metric = key.split("/")
            series.setdefault(metric, {}).setdefault("/".join(group), []).append((row["epoch"], value))
    for ax, metric in zip(axes, metrics):
        for group, points in sorted(series.get(metric, {}).items()):
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker=".", label=group)
        ax.set(title=metric, xlabel="epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def displayable(images: Tensor) -> Tensor:
    """Images as floats in [0, 1] for display: uint8 scaled, other floats min-max scaled per image."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.float()
    if images.numel() and (images.min() < 0 or images.max() > 1):
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)
    return images


def flip_grid_figure(
    images: Tensor,
    predictions: Tensor,
    sequence: TransformSequence,
    class_names: Sequence[str] | None = None,
    max_images: int = FLIP_GRID_IMAGES,
    targets: Tensor | None = None,
) -> Figure:
    """The images whose predictions flip most, each as a strip of its frames titled with the prediction.

    ``images`` (n, C, H, W), ``predictions`` (n, T) and optional ``targets`` (n,) (shown at the left of
    each row). The frames are ``sequence``'s frames of the images as given, so they show what the model saw;
    images outside [0, 1] are min-max scaled per strip for display. A title is red where the prediction differs
    from the previous frame's.
    """
    flips = (predictions[:, 1:] != predictions[:, :-1]).sum(dim=1)
    order = torch.argsort(flips, descending=True, stable=True)[:max_images]
    num_frames = predictions.shape[1]
    fig = _figure(1.2 * num_frames + 0.6, 1.35 * max(len(order), 1) + 0.4)
    axes = fig.subplots(max(len(order), 1), num_frames, squeeze=False)
    chosen = images[order]
    chosen = chosen.float() / 255 if chosen.dtype == torch.uint8 else chosen.float()
    # the frames exactly as the model was given them (before its normalization), every frame of the shown images at
    # once, (n, T, C, H', W'); then made displayable per image over its whole strip (a no-op for images in [0, 1])
    frames = None
    if len(order):
        strips = torch.stack([sequence.frame(chosen, t) for t in range(num_frames)], dim=1)
        shown = displayable(strips.flatten(1, 2)).unflatten(1, strips.shape[1:3]).clamp(0, 1)
        frames = shown.permute(0, 1, 3, 4, 2).cpu().numpy()

    def name_of(label: int) -> str:
        return class_names[label] if class_names and label < len(class_names) else str(label)

    for row, image_index in enumerate(order.tolist()):
        assert frames is not None  # drawn above whenever there are images to show
        for t in range(num_frames):
            ax = axes[row][t]
            frame = frames[row, t]
            gray = frame.shape[-1] == 1
            ax.imshow(frame[..., 0] if gray else frame, cmap="gray" if gray else None)
            label = int(predictions[image_index, t])
            changed = t > 0 and label != int(predictions[image_index, t - 1])
            ax.set_title(name_of(label), fontsize=7, color="red" if changed else "black")
            if t == 0 and targets is not None:
                ax.set_ylabel(f"true: {name_of(int(targets[image_index]))}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_xlabel(sequence.frame_labels[t], fontsize=6)
                ax.xaxis.set_label_position("top")
    fig.suptitle(f"most-flipping images ({int(flips[order].sum()) if len(order) else 0} flips shown)", fontsize=9)
    return fig


def accuracy_flip_figure(rows: Sequence[Mapping[str, Any]], sequences: Sequence[str]) -> Figure:
    """Accuracy against flip rate, one point per row, one panel per sequence.

    Each row (a model) has ``"variant"`` (its label), ``"test_accuracy"`` and ``"{sequence}_flip_rate"``.
    """
    fig = _figure(4.6 * len(sequences), 3.8)
    for ax, name in zip(fig.subplots(1, len(sequences), squeeze=False)[0], sequences):
        for row in rows:
            point = (row[f"{name}_flip_rate"], row["test_accuracy"])
            ax.scatter(*point)
            ax.annotate(row["variant"], point, textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.set(
            title=f"{name}: accuracy vs flip rate",
            xlabel=f"{name} flip rate (lower: more invariant)",
            ylabel="test accuracy",
        )
        ax.grid(alpha=0.3)
    return fig


def monitor_history_figure(histories: Mapping[str, Sequence[Mapping]], keys: Sequence[str]) -> Figure:
    """Monitored values over the epochs: one panel per key, one line per model.

    ``histories`` maps a model's label to its ``InvarianceMonitor`` history (rows ``{"epoch", "values"}``);
    a row without a key is skipped, a model without any draws no line.
    """
    fig = _figure(4.6 * len(keys), 3.8)
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False, sharey=True)[0], keys):
        for label, history in histories.items():
            points = [(row["epoch"], row["values"][key]) for row in history if key in row["values"]]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set(title=f"monitor: {key}", xlabel="epoch", ylabel="flip rate", ylim=(0, None))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def flip_rate_by_sequence_figure(
    sequences: Mapping[str, TransformSequence], results: Mapping[str, Mapping[str, Tensor]], title: str
) -> Figure:
    """Per-step flip rate (from the previous frame) of every sequence: shifts on one axes, the others on another."""
    shifts = [name for name, sequence in sequences.items() if isinstance(sequence, ShiftSequence)]
    groups = {"shift": shifts, "scale": [name for name in sequences if name not in shifts]}
    groups = {kind: names for kind, names in groups.items() if names}
    fig = _figure(5.2 * len(groups), 3.6)
    for ax, (kind, names) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items()):
        for name in names:
            ax.plot(
                sequences[name].frame_values[1:], results[name]["per_frame_flip_rate"].tolist(), marker="o", label=name
            )
        ax.set(
            title=f"P(top-1 change) per {kind} step",
            xlabel=sequences[names[0]].axis_label,
            ylabel="flip rate from the previous frame",
            ylim=(0, None),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def train_test_figure(gap: Gap, counts: Mapping[str, int]) -> Figure:
    """Grouped bars per sequence: each :data:`GAP_METRICS` metric on training vs test images, with error bars of
    twice the :func:`sampling_bound` (``gap`` from :func:`~invariance_lightning.metrics.gap.train_test_gap`)."""
    names = list(gap)
    fig = _figure(4.2 * len(GAP_METRICS), 3.6)
    positions = torch.arange(len(names), dtype=torch.float64)
    for ax, (metric, label) in zip(fig.subplots(1, len(GAP_METRICS), squeeze=False)[0], GAP_METRICS.items()):
        for offset, split in ((-0.2, "train"), (0.2, "test")):
            values = [gap[name][metric][split] for name in names]
            errors = [2 * sampling_bound(value, counts[split]) for value in values]
            ax.bar((positions + offset).tolist(), values, width=0.4, label=split, yerr=errors, capsize=2)
        ax.set_xticks(positions.tolist(), names, rotation=30, ha="right", fontsize="small")
        ax.set(title=label, ylim=(0, None))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    return fig


def layer_profile_figure(report: EquivarianceReport) -> Figure:
    """Pooled-feature change (one line per shift) and equivariance error (first shift) against depth."""
    rows = list(report)
    labels = [f"{row.name or '(model)'}" + (f" /{row.stride[0]:g}" if row.stride else "") for row in rows]
    x = list(range(len(rows)))
    fig = _figure(max(8.0, 0.55 * len(rows) + 3), 4.2)
    pooled_ax, error_ax = fig.subplots(1, 2, sharex=True)
    for shift in dict.fromkeys(s for row in rows for s in row.pooled_change_by_shift):
        pooled_ax.plot(
            x,
            [row.pooled_change_by_shift.get(shift, math.nan) for row in rows],
            marker="o",
            label=f"shift ({shift[0]},{shift[1]})",
        )
    error_ax.plot(x, [row.equivariance_error for row in rows], marker="s", linestyle="none", color="tab:red")
    pooled_ax.set(title="pooled-feature change", ylabel="||g(shifted x) - g(x)|| / ||g(x)||", ylim=(0, None))
    error_ax.set(
        title=f"equivariance error, shift ({report.shift[0]},{report.shift[1]}), border {report.border} px",
        ylabel="relative L2 error",
        ylim=(0, None),
    )
    for ax in (pooled_ax, error_ax):
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize="small")
        ax.grid(alpha=0.3)
    pooled_ax.legend(fontsize="small")
    fig.suptitle(
        f"{report.mode} input shifts, {report.num_images} images; tick labels: layer /cumulative "
        "stride; no error where the feature shift is fractional",
        fontsize="medium",
    )
    return fig
