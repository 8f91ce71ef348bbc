"""Matplotlib figures of invariance measurements (object-oriented API: no pyplot state, no GUI backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from invariance_lightning.transforms import TransformSequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HISTORY_METRICS = ("flip_rate", "consistency", "mac", "worst_case_accuracy")
#: Images in the grid of the most-flipping images.
FLIP_GRID_IMAGES = 6


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def per_frame_figure(sequence: TransformSequence, metrics_by_split: Mapping[str, Mapping[str, Tensor]], title: str) -> Figure:
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
    each row). A title is red where the prediction differs from the previous frame's.
    """
    flips = (predictions[:, 1:] != predictions[:, :-1]).sum(dim=1)
    order = torch.argsort(flips, descending=True, stable=True)[:max_images]
    num_frames = predictions.shape[1]
    fig = _figure(1.2 * num_frames + 0.6, 1.35 * max(len(order), 1) + 0.4)
    axes = fig.subplots(max(len(order), 1), num_frames, squeeze=False)
    shown = displayable(images[order])

    def name_of(label: int) -> str:
        return class_names[label] if class_names and label < len(class_names) else str(label)

    for row, image_index in enumerate(order.tolist()):
        for t in range(num_frames):
            ax = axes[row][t]
            frame = sequence.frame(shown[row : row + 1], t)[0].clamp(0, 1)
            ax.imshow(frame.permute(1, 2, 0).squeeze(-1).cpu().numpy(), cmap="gray" if frame.shape[0] == 1 else None)
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
