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

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from kornia.enhance import normalize as kornia_normalize
from torch import Tensor, nn

from invariance_lightning.metrics.evaluate import Normalization, as_float_images, check_normalize, module_device
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.transforms.functional import integer_shift

__all__ = ["EquivarianceReport", "LayerEquivariance", "default_layers", "layer_equivariance"]

#: Boundary handling of the shifts compared by :func:`layer_equivariance`.
EQUIVARIANCE_MODES = ("circular", "zeros")

#: A shift: ``s`` means ``(dx, dy) = (s, s)`` (diagonal); a pair is ``(dx, dy)``, right and down.
ShiftLike = int | tuple[int, int]


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
        header = ["layer", "type", "shape", "stride", f"equiv. error @{_fmt_shift(self.shift)}"]
        header += [f"pooled change @{_fmt_shift(s)}" for s in shifts] + ["note"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [
                row.name or "(model)",
                row.kind,
                "x".join(map(str, row.shape)) if row.shape else "-",
                _fmt_stride(row.stride),
                _fmt_value(row.equivariance_error, digits),
            ]
            cells += [_fmt_value(row.pooled_change_by_shift.get(s, math.nan), digits) for s in shifts]
            lines.append("| " + " | ".join(cells + [row.note]) + " |")
        return "\n".join(lines)


def default_layers(model: nn.Module) -> list[str]:
    """Layers measured when none are named, in ``named_modules`` order.

    Every ``nn.Conv2d``; every module whose class name contains ``Pool`` (torch's pooling layers,
    BlurPool and similar); every block, i.e. a non-leaf module that is a direct child of an
    ``nn.Sequential`` or ``nn.ModuleList`` (the residual blocks of a ResNet stage); and the last
    ``nn.Linear`` (usually the classifier).
    """
    chosen: list[str] = []
    last_linear: str | None = None
    blocks = {
        f"{parent}.{child}" if parent else child
        for parent, module in model.named_modules()
        if isinstance(module, (nn.Sequential, nn.ModuleList))
        for child, sub in module.named_children()
        if next(sub.children(), None) is not None
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) or "pool" in type(module).__name__.lower() or name in blocks:
            chosen.append(name)
        elif isinstance(module, nn.Linear):
            last_linear = name
    if last_linear is not None:
        chosen.append(last_linear)
    return chosen


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a tensor (N, C, H, W), got {got}")
    images = as_float_images(images)
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got an empty batch")
    if mode not in EQUIVARIANCE_MODES:
        raise ValueError(f"mode must be one of {EQUIVARIANCE_MODES}, got {mode!r}")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border must be an int >= 0 (input pixels), got {border!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    size = (images.shape[-2], images.shape[-1])
    main_shift = _as_shift(shift, "shift", size)
    all_shifts = list(dict.fromkeys([main_shift, *(_as_shift(s, "pooled_shifts", size) for s in pooled_shifts or ())]))
    normalize = check_normalize(normalize)
    names = default_layers(model) if layers is None else _check_layers(model, layers)
    if not names:
        raise ValueError("model has no Conv2d, pooling, block or Linear modules to measure; pass layers=[...]")

    device = module_device(model)
    stats = {name: _LayerStats(size, main_shift, mode, border) for name in names}
    order: dict[str, None] = {}
    with evaluation_mode(model), _capture(model, names) as run:
        for batch in images.split(batch_size):
            batch = batch.to(device)
            reference = run(_normalized(batch, normalize))
            order.update(dict.fromkeys(reference))
            for dx, dy in all_shifts:
                shifted = run(_normalized(integer_shift(batch, dx, dy, mode), normalize))
                for name, (out, calls) in reference.items():
                    stats[name].add(out, calls, shifted[name][0], (dx, dy), batch.shape[0])
    never_ran = [name for name in names if name not in order]
    for name in never_ran:
        stats[name].notes["did not run in the forward pass"] = None
    rows = [stats[name].row(name, _kind(model, name), len(images)) for name in [*order, *never_ran]]
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
                fraction = f"shift {_fmt_shift(self.shift)} / stride {_fmt_stride(stride)}"
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


@contextmanager
def _capture(model: nn.Module, names: Sequence[str]) -> Iterator[Callable[[Tensor], dict[str, tuple[Any, int]]]]:
    """Hooks on ``names``; yields ``run(x)`` -> ``{name: (last output, calls)}`` in first-call order."""
    modules = dict(model.named_modules())
    outputs: dict[str, tuple[Any, int]] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            outputs[name] = (output, outputs[name][1] + 1 if name in outputs else 1)

        return hook

    def run(x: Tensor) -> dict[str, tuple[Any, int]]:
        outputs.clear()
        model(x)
        return dict(outputs)

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield run
    finally:
        for handle in handles:
            handle.remove()


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"layers must be a sequence of module names (str), got {layers!r}")
    valid = [name for name, _ in model.named_modules()]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        close = {name: difflib.get_close_matches(name, valid, n=3) for name in unknown}
        hints = "; ".join(f"{name!r} (did you mean {c}?)" if c else repr(name) for name, c in close.items())
        raise ValueError(f"unknown layers: {hints}; valid names include {valid[1:9]} (see model.named_modules())")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a name, got {list(layers)}")
    return list(layers)


def _as_shift(shift: Any, argument: str, size: tuple[int, int]) -> tuple[int, int]:
    pair = (shift, shift) if isinstance(shift, int) and not isinstance(shift, bool) else shift
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"{argument} must be an int or a (dx, dy) pair of ints, got {shift!r}")
    dx, dy = pair
    if abs(dx) >= size[1] or abs(dy) >= size[0]:
        raise ValueError(f"{argument} {shift!r} must be smaller than the image size (H, W) = {size}")
    return (dx, dy)


def _normalized(images: Tensor, normalize: Normalization | None) -> Tensor:
    if normalize is None:
        return images
    return kornia_normalize(images, images.new_tensor(normalize[0]), images.new_tensor(normalize[1]))


def _kind(model: nn.Module, name: str) -> str:
    return type(model.get_submodule(name)).__name__


def _fmt_shift(shift: tuple[int, int]) -> str:
    return f"({shift[0]},{shift[1]})"


def _fmt_stride(stride: tuple[float, float] | None) -> str:
    if stride is None:
        return "-"
    sy, sx = (f"{v:g}" for v in stride)
    return sy if sy == sx else f"{sy}x{sx}"


def _fmt_value(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}g}"
