"""Named sets of transform sequences: a cheap one for every-epoch monitoring, a full one for reports."""

from __future__ import annotations

from collections.abc import Callable

from invariance_lightning.transforms.base import TransformSequence
from invariance_lightning.transforms.scale import ScaleSequence
from invariance_lightning.transforms.shift import ShiftSequence


def monitor_sequences() -> dict[str, TransformSequence]:
    """Cheap defaults for every epoch: 1-px diagonal steps to (3, 3) and rescaling by 0.9 / 1.1 (7 frames)."""
    return {
        "shift": ShiftSequence(max_shift=3, direction="diagonal", mode="zeros"),
        "scale": ScaleSequence([0.9, 1.0, 1.1], mode="zeros"),
    }


def report_shift_walk() -> ShiftSequence:
    """The report's shift walk: the paper's 9 diagonal shifts (0..8 px), zero fill."""
    return ShiftSequence(max_shift=8, direction="diagonal", mode="zeros")


def report_sequences() -> dict[str, TransformSequence]:
    """The full protocol for final reports: the paper's 9 diagonal shifts (0..8 px) and 9 scales 0.8..1.2."""
    return {
        "shift": report_shift_walk(),
        "scale": ScaleSequence([0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2], mode="zeros"),
    }


def paper_sequences() -> dict[str, TransformSequence]:
    """Azulay & Weiss's protocols for small images: zero-padded, cropped and black-background shifts, rescaling."""
    return {
        "shift_zeros": ShiftSequence(max_shift=8, direction="diagonal", mode="zeros"),
        "shift_crop": ShiftSequence(max_shift=4, direction="diagonal", mode="crop", crop_size=24),
        "shift_embed": ShiftSequence(max_shift=4, direction="diagonal", mode="zeros", embed=0.75),
        "shift_circular": ShiftSequence(max_shift=8, direction="diagonal", mode="circular"),
        "scale": ScaleSequence([0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2], mode="zeros"),
    }


def content_sequences() -> dict[str, TransformSequence]:
    """The report's shift walk beside the same frames with the image in place and only the content the walk pushes
    out blacked out (``mode="mask"``): the masked walk counts the flips that need no move, only the lost border."""
    walk = report_shift_walk()
    return {"shift": walk, "shift_masked": ShiftSequence(shifts=walk.shifts, mode="mask")}


SEQUENCE_PRESETS: dict[str, Callable[[], dict[str, TransformSequence]]] = {
    "monitor": monitor_sequences,
    "report": report_sequences,
    "paper": paper_sequences,
    "content": content_sequences,
}


def sequence_preset(name: str) -> dict[str, TransformSequence]:
    """A fresh ``{name: sequence}`` dict for a preset: ``"monitor"``, ``"report"``, ``"paper"`` or ``"content"``."""
    if name not in SEQUENCE_PRESETS:
        raise ValueError(f"unknown sequence preset {name!r}; valid presets: {sorted(SEQUENCE_PRESETS)}")
    return SEQUENCE_PRESETS[name]()
