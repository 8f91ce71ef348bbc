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
    """``model``'s logits averaged over copies of the input shifted by each of ``shifts`` (and mirrored, ``hflip``).

    ``forward(x)`` runs ``model`` once on a batch of ``k * N`` copies and returns the mean of the ``k`` logits of each
    image, ``k = len(shifts)`` (twice that with ``hflip``): ``k`` times the cost of ``model`` at inference, nothing at
    training (wrap a trained model). Averaging over the whole group of circular shifts of the input makes the result
    exactly invariant to circular shifts; a small set such as :data:`STRIDE2_SHIFTS` smooths the response to the
    shifts that change a stride-2 subsampling's phase. ``hflip`` also averages over the left-right mirror image of
    each copy, the symmetry CIFAR/ImageNet training crops are flipped by: a black border that a shift brings in on the
    left is then seen on the right too. With a shift set that is symmetric in ``dx`` (the mirror of each shift is in
    the set), the result is exactly invariant to mirroring the input.

    Args:
        model: a classifier returning ``(N, C)`` logits.
        shifts: whole-pixel ``(dx, dy)`` shifts of the input (positive: right / down).
        boundary: what enters at the border: ``"circular"`` (wrap around), ``"reflect"``, or ``"zeros"`` (the value
            ``fill`` of the model's input: for normalized input, black is ``-mean / std``, not 0).
        fill: the ``"zeros"`` boundary's value.
        hflip: also average over the horizontally mirrored copy of each shifted copy.

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
        hflip: bool = False,
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
        if not isinstance(hflip, bool):
            raise TypeError(f"ShiftAveraging: hflip must be a bool, got {hflip!r}")
        self.hflip = hflip

    @property
    def copies(self) -> int:
        """Forward passes per image: ``len(shifts)``, doubled by ``hflip``."""
        return len(self.shifts) * (2 if self.hflip else 1)

    def forward(self, images: Tensor) -> Tensor:
        """Mean logits ``(N, C)`` over the shifted copies of ``images`` ``(N, C, H, W)``."""
        height, width = images.shape[-2:]
        too_large = [(dx, dy) for dx, dy in self.shifts if abs(dx) >= width or abs(dy) >= height]
        if too_large:
            raise ValueError(
                f"ShiftAveraging: shifts {too_large} do not fit {height}x{width} inputs (|dx| < width, |dy| < height)"
            )
        copies = [integer_shift(images, dx, dy, self.boundary, self.fill) for dx, dy in self.shifts]
        if self.hflip:
            copies += [copy.flip(-1) for copy in copies]
        logits = self.model(torch.cat(copies))
        return logits.unflatten(0, (self.copies, images.shape[0])).mean(dim=0)

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}, boundary={self.boundary!r}, hflip={self.hflip}"
