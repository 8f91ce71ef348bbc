"""Test-time shift averaging: an inference-time fix for shift sensitivity, paid for in forward passes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from invariance_lightning.transforms.functional import integer_shift
from invariance_lightning.validation import check_choice

#: The 2 x 2 neighbourhood: every phase of one stride-2 subsampling.
STRIDE2_SHIFTS = ((0, 0), (1, 0), (0, 1), (1, 1))

BOUNDARIES = ("circular", "reflect", "zeros")


class ShiftAveraging(nn.Module):
    """``model``'s logits averaged over copies of the input shifted by each of ``shifts``.

    ``forward(x)`` runs ``model`` once on a batch of ``len(shifts) * N`` shifted copies and returns the mean of the
    ``len(shifts)`` logits of each image: ``len(shifts)`` times the cost of ``model`` at inference, nothing at
    training (wrap a trained model). Averaging over the whole group of circular shifts of the input makes the result
    exactly invariant to circular shifts; a small set such as :data:`STRIDE2_SHIFTS` smooths the response to the
    shifts that change a stride-2 subsampling's phase.

    Args:
        model: a classifier returning ``(N, C)`` logits.
        shifts: whole-pixel ``(dx, dy)`` shifts of the input (positive: right / down).
        boundary: what enters at the border: ``"circular"`` (wrap around), ``"reflect"``, or ``"zeros"`` (the value
            ``fill`` of the model's input: for normalized input, black is ``-mean / std``, not 0).
        fill: the ``"zeros"`` boundary's value.

    >>> import torch
    >>> averaged = ShiftAveraging(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), shifts=[(0, 0), (1, 0)])
    >>> averaged(torch.rand(5, 3, 2, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        shifts: Sequence[tuple[int, int]] = STRIDE2_SHIFTS,
        boundary: str = "circular",
        fill: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"ShiftAveraging: model must be an nn.Module, got {type(model).__name__}")
        pairs = [tuple(shift) for shift in shifts]
        whole = all(len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p) for p in pairs)
        if not pairs or not whole:
            raise ValueError(f"ShiftAveraging: shifts must be a non-empty sequence of (dx, dy) int pairs, got {shifts}")
        self.model = model
        self.shifts = [(int(dx), int(dy)) for dx, dy in pairs]
        self.boundary = check_choice("ShiftAveraging", "boundary", boundary, BOUNDARIES)
        self.fill = float(fill)

    def forward(self, images: Tensor) -> Tensor:
        """Mean logits ``(N, C)`` over the shifted copies of ``images`` ``(N, C, H, W)``."""
        height, width = images.shape[-2:]
        too_large = [(dx, dy) for dx, dy in self.shifts if abs(dx) >= width or abs(dy) >= height]
        if too_large:
            raise ValueError(
                f"ShiftAveraging: shifts {too_large} do not fit {height}x{width} inputs (|dx| < width, |dy| < height)"
            )
        copies = [integer_shift(images, dx, dy, self.boundary, self.fill) for dx, dy in self.shifts]
        logits = self.model(torch.cat(copies))
        return logits.unflatten(0, (len(self.shifts), images.shape[0])).mean(dim=0)

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}, boundary={self.boundary!r}"
