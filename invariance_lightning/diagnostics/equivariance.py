"""Per-layer shift equivariance: where along a network's depth shift invariance is lost.

Azulay & Weiss (2019) trace the brittleness of CNNs to one-pixel shifts to subsampling that ignores
the sampling theorem. A layer whose output has cumulative stride ``k`` relative to the input can
at best be equivariant to input shifts that are multiples of ``k``: shifting the input by ``s``
pixels should shift the feature map by ``s / k`` pixels, which only means something when that is
a whole number. Globally pooled features are then invariant only to those shifts.

:func:`layer_equivariance` measures this with forward hooks. For each chosen layer ``f`` it reports

- the cumulative **stride** ``H_in / H_f`` (per axis, from the shapes),
- the **equivariance error** ``||f(shift_s(x)) - shift_{s/k}(f(x))|| / ||shift_{s/k}(f(x))||``, a
  per-image relative L2 error averaged over images, where ``s / k`` is a whole number (else NaN),
- the **pooled-feature change** ``||g(shift_s(x)) - g(x)|| / ||g(x)||`` averaged over images, where
  ``g`` is ``f`` globally average-pooled over its spatial dims (or flattened, for outputs that are
  not ``(N, C, H, W)`` maps), for ``s`` and optionally a list of further shifts.

Shifts are circular (``torch.roll``) by default, so content leaving one side enters on the other
and no border band is invented. A network with zero padding still sees the wrap-around seam at the
image border, so its error concentrates in a band about one receptive-field radius wide along the
borders; ``border`` excludes such a band (in input pixels, scaled to each layer's resolution) from
the equivariance error. ``mode="zeros"`` shifts in zeros instead; then ``border`` must at least
cover the vacated band (the shift) and the band beside the far edge whose receptive field lost
pixels; the shift plus the receptive-field radius always suffices. The pooled change always
pools the whole map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from invariance_lightning.diagnostics.capture import capture_outputs, check_layer_names, default_layers
from invariance_lightning.diagnostics.report import EquivarianceReport, LayerEquivariance, format_shift, format_stride
from invariance_lightning.metrics.evaluate import module_device
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.transforms.functional import integer_shift
from invariance_lightning.transforms.normalization import (
    Normalization,
    as_float_images,
    check_normalize,
    normalize_images,
)
from invariance_lightning.validation import check_choice, check_int

__all__ = ["EQUIVARIANCE_MODES", "ShiftLike", "layer_equivariance"]

#: Boundary handling of the shifts compared by :func:`layer_equivariance`.
EQUIVARIANCE_MODES = ("circular", "zeros")

#: A shift: ``s`` means ``(dx, dy) = (s, s)`` (diagonal); a pair is ``(dx, dy)``, right and down.
ShiftLike = int | tuple[int, int]


def layer_equivariance(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[str] | None = None,
    *,
    shift: ShiftLike = 1,
    pooled_shifts: Sequence[ShiftLike] | None = None,
    mode: str = "circular",
    border: int = 0,
    normalize: Normalization | None = None,
    batch_size: int = 64,
) -> EquivarianceReport:
    """Per-layer equivariance error and pooled-feature change of ``model`` under input shifts.

    Args:
        model: any module taking ``(N, C, H, W)`` images; run in eval mode under ``torch.no_grad``,
            every submodule's train/eval flag is restored afterwards and hooks are removed even on error.
        images: ``(N, C, H, W)``, floats or uint8 (scaled to [0, 1]), before ``normalize``; moved
            batch by batch to the model's device.
        layers: module names as in ``model.named_modules()`` (``""`` is the model's own output);
            ``None`` measures :func:`default_layers`.
        shift: the input shift for the equivariance error and ``pooled_change``: ``s`` means
            ``(s, s)`` (diagonal), a pair is ``(dx, dy)``; positive moves content right/down.
        pooled_shifts: further shifts for ``pooled_change_by_shift`` (``shift`` is always included).
        mode: ``"circular"`` (``torch.roll``) or ``"zeros"`` (vacated pixels become 0), applied to
            the raw images and to the feature maps alike.
        border: input pixels excluded along each side of the feature maps before the equivariance
            error, scaled to each layer (``ceil(border / stride)`` feature pixels).
        normalize: ``(mean, std)`` per channel, applied after shifting (so a zero fill is black).
        batch_size: images per forward pass.

    Returns:
        An :class:`EquivarianceReport` with one :class:`LayerEquivariance` per layer, in the order
        the layers first ran (layers that never ran come last, with a note).
    """
    owner = "layer_equivariance"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"{owner}: images must be a tensor (N, C, H, W), got {got}")
    images = as_float_images(images)
    if images.shape[0] == 0:
        raise ValueError(f"{owner}: images must hold at least one image, got an empty batch")
    check_choice(owner, "mode", mode, EQUIVARIANCE_MODES)
    check_int(owner, "border", border, 0)
    check_int(owner, "batch_size", batch_size, 1)
    size = (images.shape[-2], images.shape[-1])
    main_shift = _as_shift(shift, "shift", size)
    all_shifts = list(dict.fromkeys([main_shift, *(_as_shift(s, "pooled_shifts", size) for s in pooled_shifts or ())]))
    normalize = check_normalize("measure_equivariance", "normalize", normalize)
    names = default_layers(model) if layers is None else check_layer_names(model, layers)
    if not names:
        raise ValueError(
            f"{owner}: model has no Conv2d, pooling, block or Linear modules to measure; pass layers=[...]"
        )

    device = module_device(model)
    stats = {name: _LayerStats(size, main_shift, mode, border) for name in names}
    order: dict[str, None] = {}
    with evaluation_mode(model), capture_outputs(model, names) as run:
        for batch in images.split(batch_size):
            batch = batch.to(device)
            unshifted = run(normalize_images(batch, normalize))
            order.update(dict.fromkeys(unshifted))
            for dx, dy in all_shifts:
                shifted = run(normalize_images(integer_shift(batch, dx, dy, mode), normalize))
                for name, (out, calls) in unshifted.items():
                    stats[name].add(out, calls, shifted[name][0], (dx, dy), batch.shape[0])
    never_ran = [name for name in names if name not in order]
    for name in never_ran:
        stats[name].notes["did not run in the forward pass"] = None
    rows = [
        stats[name].row(name, type(model.get_submodule(name)).__name__, len(images)) for name in [*order, *never_ran]
    ]
    return EquivarianceReport(tuple(rows), main_shift, mode, border, len(images))


class _LayerStats:
    """Running sums of one layer's per-image errors over batches."""

    def __init__(self, size: tuple[int, int], shift: tuple[int, int], mode: str, border: int) -> None:
        self.size, self.shift, self.mode, self.border = size, shift, mode, border
        self.equivariance_sum = 0.0
        self.pooled_sums: dict[tuple[int, int], float] = {}
        self.shape: tuple[int, ...] | None = None
        self.notes: dict[str, None] = {}

    def add(self, out: Any, calls: int, shifted: Any, shift: tuple[int, int], batch: int) -> None:
        if calls > 1:
            self.notes[f"ran {calls} times per forward; last output used"] = None
        if not isinstance(out, Tensor):
            self.notes[f"output is a {type(out).__name__}, not a tensor"] = None
            return
        if out.ndim < 2 or out.shape[0] != batch:
            self.notes[f"output shape {tuple(out.shape)} has no batch dim of {batch}"] = None
            return
        self.shape = tuple(out.shape[1:])
        self.pooled_sums[shift] = self.pooled_sums.get(shift, 0.0) + _relative_error(_pool(shifted), _pool(out))
        if out.ndim != 4:
            self.notes[f"output is {out.ndim}-D, not a feature map: pooled change of the flattened output"] = None
            return
        feature_shift, crop = self.geometry()
        if shift != self.shift or feature_shift is None:
            return
        if not crop:
            self.notes[f"border {self.border} leaves no pixels to compare"] = None
            return
        expected = integer_shift(out, *feature_shift, self.mode)
        self.equivariance_sum += _relative_error(_crop(shifted, crop), _crop(expected, crop))

    def geometry(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """The feature-map shift ``(dx, dy)`` (``None`` unless whole) and the kept ``(rows, cols)`` margin."""
        assert self.shape is not None  # only called once a feature map was seen
        (h_in, w_in), (h, w) = self.size, self.shape[-2:]
        dx, dy = self.shift
        whole = (dx * w) % w_in == 0 and (dy * h) % h_in == 0
        margin = (math.ceil(self.border * h / h_in), math.ceil(self.border * w / w_in))
        crop = margin if 2 * margin[0] < h and 2 * margin[1] < w else None
        return ((dx * w // w_in, dy * h // h_in) if whole else None), crop

    def row(self, name: str, kind: str, num_images: int) -> LayerEquivariance:
        if self.shape is None:
            return LayerEquivariance(name, kind, None, None, None, math.nan, math.nan, {}, "; ".join(self.notes))
        pooled = {s: total / num_images for s, total in self.pooled_sums.items()}
        stride, feature_shift, error = None, None, math.nan
        if len(self.shape) == 3:
            (h_in, w_in), (h, w) = self.size, self.shape[-2:]
            stride = (h_in / h, w_in / w)
            feature_shift, crop = self.geometry()
            if feature_shift is None:
                fraction = f"shift {format_shift(self.shift)} / stride {format_stride(stride)}"
                self.notes[f"not comparable: {fraction} is fractional"] = None
            elif crop:
                error = self.equivariance_sum / num_images
        note = "; ".join(self.notes)
        return LayerEquivariance(name, kind, self.shape, stride, feature_shift, error, pooled[self.shift], pooled, note)


def _relative_error(actual: Tensor, expected: Tensor) -> float:
    """Sum over the batch of per-image ``||actual - expected|| / ||expected||`` (0 where both vanish)."""
    diff = (actual - expected).flatten(1).double().norm(dim=1)
    ref = expected.flatten(1).double().norm(dim=1)
    return float(torch.where(diff == 0, 0.0, diff / ref).sum())


def _pool(out: Tensor) -> Tensor:
    """Global average pool of a feature map ``(N, C, H, W)``; other outputs flattened to ``(N, -1)``."""
    return out.mean(dim=(-2, -1)) if out.ndim == 4 else out.flatten(1)


def _crop(maps: Tensor, margin: tuple[int, int]) -> Tensor:
    top, left = margin
    return maps[..., top : maps.shape[-2] - top, left : maps.shape[-1] - left]


def _as_shift(shift: Any, argument: str, size: tuple[int, int]) -> tuple[int, int]:
    pair = (shift, shift) if isinstance(shift, int) and not isinstance(shift, bool) else shift
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"layer_equivariance: {argument} must be an int or a (dx, dy) pair of ints, got {shift!r}")
    dx, dy = pair
    if abs(dx) >= size[1] or abs(dy) >= size[0]:
        raise ValueError(
            f"layer_equivariance: {argument} {shift!r} must be smaller than the image size (H, W) = {size}"
        )
    return (dx, dy)
