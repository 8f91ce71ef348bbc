"""The report of ``recipes/paper.py``: Azulay & Weiss (2019)'s measurements of one model (``report.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from invariance_lightning.diagnostics import EquivarianceReport
from invariance_lightning.metrics.gap import GAP_METRICS, Gap
from invariance_lightning.reporting.tables import (
    describe_sequence,
    per_frame_markdown,
    protocols_markdown,
    summary_markdown,
)
from invariance_lightning.transforms import TransformSequence

#: What each protocol of ``sequence_preset("paper")`` does, beside its repr and :func:`describe_sequence`; ``{size}``
#: is the images' size and ``{frame}`` the size of the sequence's frames of them.
PAPER_PROTOCOL_NOTES = {
    "shift_zeros": "the whole image moves diagonally; vacated pixels are black",
    "shift_crop": "a {frame} window moves diagonally over the image (the paper's crop protocol): no invented "
    "pixels, but the model sees inputs smaller than the {size} it was trained on",
    "shift_embed": "the image is shrunk (antialiased) onto a black {size} canvas and moves inside it (the paper's "
    "black-background protocol): every frame shows the whole object",
    "shift_circular": "wrap-around shifts (torch.roll), for reference: no border at all",
    "scale": "rescaled about the centre (bilinear, antialiased when shrinking), black padding or centre crop back "
    "to {frame}; consecutive frames differ by one step of the scale factor",
}


def protocol_note(name: str, sequence: TransformSequence, image_size: tuple[int, int]) -> str:
    """A protocol's line of the report: its repr, its frames in words and its :data:`PAPER_PROTOCOL_NOTES` entry,
    with the sizes read from ``sequence`` on images of ``image_size`` (height, width)."""
    frame = "x".join(str(side) for side in sequence.output_size(*image_size))
    note = PAPER_PROTOCOL_NOTES.get(name, "").format(size="x".join(str(side) for side in image_size), frame=frame)
    return f"- **{name}** (`{sequence!r}`): {describe_sequence(sequence)}" + (f"; {note}" if note else "")


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
    lines = [
        "| protocol | metric | train | test | test - train | ± bound | beyond bound |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
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
    ``data`` (with ``image_size``, the images' height and width), ``settings``, ``seconds``, ``command``,
    ``train_test_gap`` and ``published_protocols``, whose numbers on the test images get a "Published protocols"
    table)."""
    counts, model = payload["data"]["num_images"], payload["model"]
    image_size = (int(payload["data"]["image_size"][0]), int(payload["data"]["image_size"][1]))
    interleaved = {f"{name} ({split})": results[split][name] for name in sequences for split in ("train", "test")}
    protocol_lines = [protocol_note(name, sequence, image_size) for name, sequence in sequences.items()]
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
        parts += [
            f"### {name}",
            f"![{name}](per_frame_{name}.png)",
            "Test images:",
            per_frame_markdown(results["test"][name], sequence),
        ]
    parts += ["## Definitions", PAPER_DEFINITIONS]
    return "\n\n".join(parts) + "\n"
