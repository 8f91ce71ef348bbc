"""The result of :func:`~invariance_lightning.diagnostics.layer_equivariance`: one row per layer, and its formatting."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EquivarianceReport", "LayerEquivariance", "format_shift", "format_stride"]


@dataclass(frozen=True)
class LayerEquivariance:
    """Shift diagnostics of one layer's output (one row of an :class:`EquivarianceReport`).

    ``shape`` is the per-image output shape; ``stride`` is ``(H_in / H, W_in / W)`` for 4-D outputs;
    ``feature_shift`` is the ``(dx, dy)`` feature-map shift matching the input shift, or ``None``
    where it is not a whole number (then ``equivariance_error`` is NaN, as it is for outputs that
    are not feature maps). ``pooled_change`` is the change for the report's ``shift``;
    ``pooled_change_by_shift`` maps every measured ``(dx, dy)`` to its change. ``note`` says why a
    value is missing.
    """

    name: str
    kind: str
    shape: tuple[int, ...] | None
    stride: tuple[float, float] | None
    feature_shift: tuple[int, int] | None
    equivariance_error: float
    pooled_change: float
    pooled_change_by_shift: dict[tuple[int, int], float] = field(default_factory=dict)
    note: str = ""

    @property
    def comparable(self) -> bool:
        """Whether the input shift maps to a whole-pixel shift of this feature map."""
        return self.feature_shift is not None

    def as_dict(self) -> dict[str, Any]:
        """Plain types only (shift keys become ``"dx,dy"`` strings), e.g. for ``json.dumps``."""
        row = asdict(self)
        row["pooled_change_by_shift"] = {f"{dx},{dy}": v for (dx, dy), v in self.pooled_change_by_shift.items()}
        return row


@dataclass(frozen=True)
class EquivarianceReport(Sequence[LayerEquivariance]):
    """The rows of :func:`layer_equivariance` in execution order; index by position or layer name."""

    rows: tuple[LayerEquivariance, ...]
    shift: tuple[int, int]
    mode: str
    border: int
    num_images: int

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerEquivariance]:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> LayerEquivariance:  # type: ignore[override]
        if isinstance(key, str):
            for row in self.rows:
                if row.name == key:
                    return row
            raise KeyError(f"no layer {key!r} in this report; layers: {self.names}")
        return self.rows[key]

    @property
    def names(self) -> list[str]:
        """Layer names, in row order."""
        return [row.name for row in self.rows]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{layer name: row.as_dict()}`` in row order."""
        return {row.name: row.as_dict() for row in self.rows}

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table: one line per layer, a pooled-change column per measured shift."""
        shifts = list(dict.fromkeys(s for row in self.rows for s in row.pooled_change_by_shift))
        header = ["layer", "type", "shape", "stride", f"equiv. error @{format_shift(self.shift)}"]
        header += [f"pooled change @{format_shift(s)}" for s in shifts] + ["note"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [
                row.name or "(model)",
                row.kind,
                "x".join(map(str, row.shape)) if row.shape else "-",
                format_stride(row.stride),
                _format_value(row.equivariance_error, digits),
            ]
            cells += [_format_value(row.pooled_change_by_shift.get(s, math.nan), digits) for s in shifts]
            lines.append("| " + " | ".join([*cells, row.note]) + " |")
        return "\n".join(lines)


def format_shift(shift: tuple[int, int]) -> str:
    """``(dx,dy)``."""
    return f"({shift[0]},{shift[1]})"


def format_stride(stride: tuple[float, float] | None) -> str:
    """``2`` for equal strides, ``2x4`` (rows x columns) otherwise, ``-`` for none."""
    if stride is None:
        return "-"
    sy, sx = (f"{v:g}" for v in stride)
    return sy if sy == sx else f"{sy}x{sx}"


def _format_value(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}g}"
