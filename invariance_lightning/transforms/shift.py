"""Translation sequences: the paper's one-pixel shifts, explicit shift lists and shift grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from invariance_lightning.transforms.base import TransformSequence, check_crop_size
from invariance_lightning.transforms.functional import center_crop, shift
from invariance_lightning.validation import check_choice, check_number

DIRECTIONS = ("diagonal", "horizontal", "vertical")


def _direction_shifts(max_shift: float, step: float, direction: str) -> list[tuple[float, float]]:
    count = max_shift / step
    if abs(count - round(count)) > 1e-9:
        raise ValueError(
            f"ShiftSequence: max_shift must be a whole multiple of step, got max_shift={max_shift} and step={step}"
        )
    offsets = [k * step for k in range(round(count) + 1)]
    unit = {"diagonal": (1, 1), "horizontal": (1, 0), "vertical": (0, 1)}[direction]
    return [(_tidy(d * unit[0]), _tidy(d * unit[1])) for d in offsets]


def _grid_shifts(max_shift: float, step: float) -> list[tuple[float, float]]:
    """Every (dx, dy) in [0, max_shift]^2, in snake order so that consecutive frames are one step apart."""
    axis = [dx for dx, _ in _direction_shifts(max_shift, step, "horizontal")]
    rows: list[tuple[float, float]] = []
    for row, dy in enumerate(axis):
        columns = axis if row % 2 == 0 else axis[::-1]
        rows.extend((dx, dy) for dx in columns)
    return rows


def _tidy(value: float) -> float:
    """Integers as ``int`` (exact integer shifts, tidy reprs); fractions unchanged."""
    return int(value) if float(value).is_integer() else float(value)


class ShiftSequence(TransformSequence):
    """Frames of an image translated by a list of ``(dx, dy)`` pixel shifts.

    Build it from ``max_shift`` (frames at ``k * step`` for ``k = 0 .. max_shift / step`` along
    ``direction``; diagonal means ``(k, k)``), from ``grid=True`` (every shift in the square
    ``[0, max_shift]^2``, ordered so that consecutive frames differ by one step), or from an
    explicit ``shifts`` list. Positive ``dx`` moves content right, positive ``dy`` down.

    Modes:
        ``"circular"``: wrap around (equals ``torch.roll`` for integer shifts; fractional shifts
        are band-limited, through the FFT).
        ``"zeros"``: vacated pixels take ``fill`` (in the units of the tensor given).
        ``"reflect"``: vacated pixels mirror the image about its border pixels.
        ``"crop"``: a ``crop_size`` window moves over the image, so no border is invented; frames
        are smaller than the input. The window is centred at shift (0, 0); ``crop_size=None``
        takes the largest centred window that fits every shift.
        ``"mask"``: the image does not move; the pixels a ``"zeros"`` shift would push out of the
        frame take ``fill`` (integer shifts only). A ``"zeros"`` frame is the ``torch.roll`` of its
        ``"mask"`` frame, so a network exactly invariant to circular shifts (APS or LPS with circular
        padding, in eval mode) classifies both alike, and for any model the two sequences' flip rates
        separate what the move changes from what the lost content changes.
    Integer shifts copy pixels exactly; fractional shifts in the modes other than circular use
    bilinear interpolation.

    Example:
        >>> ShiftSequence(max_shift=2)
        ShiftSequence(shifts=[(0, 0), (1, 1), (2, 2)], mode='zeros')
    """

    modes = ("circular", "zeros", "reflect", "crop", "mask")

    def __init__(
        self,
        max_shift: float | None = None,
        direction: str = "diagonal",
        step: float = 1,
        *,
        shifts: Sequence[tuple[float, float]] | None = None,
        grid: bool = False,
        mode: str = "zeros",
        fill: float = 0.0,
        crop_size: int | tuple[int, int] | None = None,
        embed: float | None = None,
    ) -> None:
        super().__init__(mode, fill, embed)
        # checked even where grid or shifts make it unused: a typo is still a typo
        check_choice("ShiftSequence", "direction", direction, DIRECTIONS)
        if (shifts is None) == (max_shift is None):
            given = "both" if shifts is not None else "neither"
            raise ValueError(
                f"ShiftSequence: either max_shift (with direction/step/grid) or shifts must be given, got {given}"
            )
        self.direction: str | None = None
        if shifts is None:
            max_shift = _tidy(check_number("ShiftSequence", "max_shift", max_shift, low=0, strict=True))
            step = _tidy(check_number("ShiftSequence", "step", step, low=0, strict=True))
            if grid:
                shifts = _grid_shifts(max_shift, step)
            else:
                shifts = _direction_shifts(max_shift, step, direction)
                self.direction = direction
        elif grid:
            raise ValueError(
                "ShiftSequence: grid must be False with a shifts list (grid=True builds them from max_shift)"
            )
        self.shifts = self._check_shifts(shifts)
        self.crop_size = check_crop_size("ShiftSequence", crop_size, mode)
        if mode == "mask" and not all(float(v).is_integer() for pair in self.shifts for v in pair):
            raise ValueError(
                f"ShiftSequence: mode 'mask' takes integer shifts only (from shifts, or max_shift and step), got "
                f"{self.shifts!r}"
            )

    @staticmethod
    def _check_shifts(shifts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        checked = []
        for item in shifts:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"ShiftSequence: shifts must be (dx, dy) pairs, got {item!r}")
            dx, dy = (check_number("ShiftSequence", f"each shift in shifts ({item!r})", v) for v in item)
            checked.append((_tidy(dx), _tidy(dy)))
        if len(checked) < 2:
            raise ValueError(f"ShiftSequence: shifts must have at least 2 frames, got {checked!r}")
        return checked

    def __len__(self) -> int:
        return len(self.shifts)

    @property
    def max_abs_shift(self) -> tuple[float, float]:
        """Largest ``|dx|`` and ``|dy|`` in the sequence."""
        return max(abs(dx) for dx, _ in self.shifts), max(abs(dy) for _, dy in self.shifts)

    @property
    def frame_values(self) -> list[float]:
        if self.direction == "vertical":
            return [float(dy) for _, dy in self.shifts]
        if self.direction is not None:
            return [float(dx) for dx, _ in self.shifts]
        return [float(i) for i in range(len(self))]

    @property
    def axis_label(self) -> str:  # type: ignore[override]
        if self.direction == "diagonal":
            return "shift (px, diagonal: dx = dy)"
        if self.direction is not None:
            return f"shift (px, {self.direction})"
        return "frame"

    @property
    def frame_labels(self) -> list[str]:
        return [f"({dx}, {dy})" for dx, dy in self.shifts]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        max_dx, max_dy = self.max_abs_shift
        if self.embed is not None:
            obj_h, obj_w = self._embedded_size(height, width)
            margin_y, margin_x = (height - obj_h) // 2, (width - obj_w) // 2
            if max_dx > margin_x or max_dy > margin_y:
                raise ValueError(
                    f"shifts up to (dx={max_dx}, dy={max_dy}) do not fit the embed margin: embed={self.embed} puts a "
                    f"{obj_h}x{obj_w} object on the {height}x{width} canvas, leaving {margin_y} rows and {margin_x} "
                    "columns on each side; use a smaller embed or smaller shifts"
                )
        if self.mode != "crop":
            if max_dx >= width or max_dy >= height:
                raise ValueError(
                    f"shifts up to (dx={max_dx}, dy={max_dy}) do not fit {height}x{width} images: "
                    "|dx| must be < width and |dy| < height"
                )
            return height, width
        return self._crop_window(height, width)

    def _crop_window(self, height: int, width: int) -> tuple[int, int]:
        max_dx, max_dy = (math.ceil(m) for m in self.max_abs_shift)
        crop_h, crop_w = self.crop_size or (height - 2 * max_dy, width - 2 * max_dx)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        rows = [top - dy for _, dy in self.shifts]
        cols = [left - dx for dx, _ in self.shifts]
        if (
            crop_h <= 0
            or crop_w <= 0
            or min(rows) < 0
            or max(rows) + crop_h > height
            or min(cols) < 0
            or max(cols) + crop_w > width
        ):
            raise ValueError(
                f"a {crop_h}x{crop_w} crop window shifted by up to (dx={max_dx}, dy={max_dy}) does not fit "
                f"{height}x{width} images: the window needs crop_size + 2 * shift <= image size on each axis"
            )
        return crop_h, crop_w

    def _transform(self, images: Tensor, index: int) -> Tensor:
        dx, dy = self.shifts[index]
        if self.mode == "mask":  # there and back: the far border's content is lost, the image stays in place
            return shift(shift(images, dx, dy, "zeros", self.fill), -dx, -dy, "zeros", self.fill)
        if self.mode != "crop":
            return shift(images, dx, dy, self.mode, self.fill)
        # A window moving left over the image shows content moving right. The crop window lies
        # inside the image for every shift (checked by output_size), so the boundary never shows.
        crop_h, crop_w = self._crop_window(*images.shape[-2:])
        return center_crop(shift(images, dx, dy, "zeros"), crop_h, crop_w)

    def _repr_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"shifts": self.shifts}
        if self.crop_size is not None:
            args["crop_size"] = self.crop_size
        return args
