"""Published shift-invariance protocols, with the offsets, padding and repeats of the authors' evaluation code.

``PROTOCOLS`` maps a name to its definition (a frozen dataclass); :func:`evaluate_protocol` runs one on a
model. Every protocol is computed from additive integer counts (:func:`protocol_counts`), so that counts from
several processes can be summed (e.g. ``torch.distributed.all_reduce``) before
``PROTOCOLS[name].summarize(counts)``, giving exactly the single-process result. Random shifts are drawn per
image from ``seed`` and the image's global index, so results do not depend on ``batch_size`` or on how the
images are split over processes.

Shifts follow the package convention: a shift ``(dx, dy)`` moves the image content right by ``dx`` and down
by ``dy`` pixels. docs/metrics.md maps each protocol to the authors' code (window offsets, ``torch.roll``).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import InitVar, dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from invariance_lightning.metrics.evaluate import ForwardFn, Normalization, iter_frame_logits, module_device
from invariance_lightning.metrics.functional import check_logits, consistency_stats
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.metrics.outputs import check_outputs, class_targets, class_targets_error
from invariance_lightning.transforms import ShiftSequence, TransformSequence
from invariance_lightning.transforms.functional import pad_2d, shift
from invariance_lightning.transforms.normalization import check_normalize
from invariance_lightning.validation import (
    check_choice,
    check_fits,
    check_images,
    check_int,
    check_targets,
    check_unit_range,
)

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """One step of the splitmix64 generator: a bijective 64-bit mix with good avalanche."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for image ``index`` under ``seed``, independent of the global RNG state."""
    return torch.Generator().manual_seed(_splitmix64(_splitmix64(seed & _MASK64) ^ index))


@dataclass(frozen=True)
class _Runner:
    """How to forward frames: the model and the options of :func:`protocol_counts`."""

    model: nn.Module
    normalize: Normalization | None
    batch_size: int
    device: torch.device
    forward_fn: ForwardFn | None
    outputs: str = "logits"

    def logits(
        self, images: Tensor, targets: Tensor | None, sequence: TransformSequence
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """``(logits (n, T, C), targets)`` chunks of ``sequence`` on ``images``, checked for NaN/inf and for targets
        that are not class indices of the model's classes."""
        for logits, chunk_targets in iter_frame_logits(
            self.model,
            images,
            sequence,
            targets,
            batch_size=self.batch_size,
            normalize=self.normalize,
            forward_fn=self.forward_fn,
            device=self.device,
            outputs=self.outputs,
        ):
            error = class_targets_error(chunk_targets, logits.shape[-1])
            if error is not None:
                raise ValueError(error)
            yield check_logits(logits, chunk_targets, owner="protocol_counts")


def _add(totals: dict[str, int], **counts: Tensor | int) -> None:
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + int(value)


@dataclass(frozen=True)
class ShiftProtocol(ABC):
    """A named, published shift-invariance measurement.

    Attributes:
        name: key in :data:`PROTOCOLS`.
        citation: the paper that defines it.
        source: repository and file of the authors' evaluation code the parameters are taken from.
    """

    name: str
    citation: str
    source: str

    #: Whether the protocol measures accuracy, so that ``targets`` are required.
    needs_targets: ClassVar[bool] = False
    #: Every key :func:`protocol_counts` may return (a key missing from a result counts 0).
    count_names: ClassVar[tuple[str, ...]]

    @property
    @abstractmethod
    def frames_per_image(self) -> int:
        """Forward passes the protocol makes per image."""

    @property
    @abstractmethod
    def description(self) -> str:
        """One sentence: what is shifted how, and what is counted."""

    @abstractmethod
    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError if the protocol's shifts do not fit ``height`` x ``width`` images."""

    @abstractmethod
    def _counts(
        self, run: _Runner, images: Tensor, targets: Tensor | None, indices: Tensor, seed: int
    ) -> dict[str, int]:
        """Additive counts over ``images`` (global indices ``indices``)."""

    @abstractmethod
    def summarize(self, counts: Mapping[str, Tensor | int]) -> dict[str, float]:
        """The protocol's numbers (fractions in [0, 1]) from summed counts."""


class _ImageShifts(TransformSequence):
    """Frames of a fixed batch in which every image has its own integer shifts: ``shifts[i, t] = (dx, dy)``.

    Frame ``t`` of image ``i`` is the image shifted by ``shifts[i, t]`` (``"zeros"``: vacated pixels are 0;
    ``"circular"``: equals ``torch.roll``), then the central ``crop`` window (None: the whole image).
    """

    modes = ("zeros", "circular")

    def __init__(self, shifts: Tensor, mode: str, crop: int | None) -> None:
        super().__init__(mode, 0.0, None)
        self.shifts = shifts
        self.crop = crop
        self.margin = int(shifts.abs().max()) if shifts.numel() else 0

    def __len__(self) -> int:
        return self.shifts.shape[1]

    @property
    def frame_values(self) -> list[float]:
        return [float(t) for t in range(len(self))]

    @property
    def frame_labels(self) -> list[str]:
        return [f"frame {t}" for t in range(len(self))]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.margin >= min(height, width) or (self.crop is not None and self.crop > min(height, width)):
            raise ValueError(f"shifts up to {self.margin} px and crop {self.crop} do not fit {height}x{width} images")
        return (height, width) if self.crop is None else (self.crop, self.crop)

    def _transform(self, images: Tensor, index: int) -> Tensor:
        if images.shape[0] != self.shifts.shape[0]:
            raise ValueError(f"these per-image shifts are for {self.shifts.shape[0]} images, got {images.shape[0]}")
        height, width = images.shape[-2:]
        out_h, out_w = self.output_size(height, width)
        pad = self.margin
        padded = pad_2d(images, pad, pad, pad, pad, self.mode)
        offset = self.shifts[:, index].to(images.device)
        # Output pixel (r, c) of a shift (dx, dy) is input pixel (r - dy, c - dx) of the centred window.
        top = pad + (height - out_h) // 2 - offset[:, 1]
        left = pad + (width - out_w) // 2 - offset[:, 0]
        rows = top[:, None] + torch.arange(out_h, device=images.device)
        cols = left[:, None] + torch.arange(out_w, device=images.device)
        flat = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).flatten(1)  # (n, out_h * out_w)
        windows = padded.flatten(2).gather(2, flat[:, None, :].expand(-1, images.shape[1], -1))
        return windows.unflatten(2, (out_h, out_w))

    def _repr_args(self) -> dict[str, Any]:
        return {"num_images": self.shifts.shape[0], "crop": self.crop}


@dataclass(frozen=True)
class RandomPairProtocol(ShiftProtocol):
    """Consistency under two independently drawn random shifts of each image, averaged over ``passes``.

    Per image and pass, two shifts ``(dx, dy)`` are drawn with each coordinate uniform on the integers of
    ``shift_range`` (inclusive); each shifted copy is classified and the pair agrees when both top-1 labels
    are equal. ``consistency`` is the share of agreeing pairs over all images and passes.

    Attributes:
        shift_range: inclusive ``(low, high)`` content shift per axis, in pixels.
        boundary: ``"zeros"`` (zero-pad then crop: black borders) or ``"circular"`` (``torch.roll``).
        passes: pairs drawn per image.
        crop: side of the central window classified after shifting (None: the whole image).
    """

    shift_range: tuple[int, int]
    boundary: str
    passes: int
    crop: int | None = None

    count_names: ClassVar[tuple[str, ...]] = ("num_images", "num_pairs", "agreeing_pairs", "num_predictions", "correct")

    def __post_init__(self) -> None:
        low, high = self.shift_range
        expected = "a (low, high) pair of ints with low <= high"
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise TypeError(f"{self.name}: shift_range must be {expected}, got {self.shift_range!r}")
        if low > high:
            raise ValueError(f"{self.name}: shift_range must be {expected}, got {self.shift_range!r}")
        check_choice(self.name, "boundary", self.boundary, _ImageShifts.modes)
        check_int(self.name, "passes", self.passes, 1)
        if self.crop is not None:
            check_int(self.name, "crop", self.crop, 1)

    @property
    def frames_per_image(self) -> int:
        return 2 * self.passes

    @property
    def description(self) -> str:
        low, high = self.shift_range
        fill = "zero-filled" if self.boundary == "zeros" else "circular"
        window = "" if self.crop is None else f", central {self.crop}x{self.crop} window"
        return (
            f"{self.passes} pass(es) of two {fill} shifts per image{window}, dx and dy each uniform on "
            f"[{low}, {high}] px; consistency = share of pairs with equal top-1 labels"
        )

    def draw_shifts(self, indices: Tensor, seed: int) -> Tensor:
        """Shifts ``(N, 2 * passes, 2)`` as ``(dx, dy)``: frames ``2p`` and ``2p + 1`` are pass ``p``'s pair.

        Image ``i`` draws from :func:`image_generator` ``(seed, indices[i])`` alone.
        """
        low, high = self.shift_range
        shifts = torch.empty(len(indices), self.frames_per_image, 2, dtype=torch.long)
        for row, index in enumerate(indices.tolist()):
            generator = image_generator(seed, index)
            shifts[row] = torch.randint(low, high + 1, (self.frames_per_image, 2), generator=generator)
        return shifts

    def check_size(self, height: int, width: int) -> None:
        largest = max(abs(v) for v in self.shift_range)
        if largest >= min(height, width) or (self.crop is not None and self.crop > min(height, width)):
            raise ValueError(
                f"protocol {self.name!r} does not fit {height}x{width} images: shifts up to {largest} px need "
                f"images larger than {largest} px" + ("" if self.crop is None else f" and at least crop={self.crop} px")
            )

    def _counts(
        self, run: _Runner, images: Tensor, targets: Tensor | None, indices: Tensor, seed: int
    ) -> dict[str, int]:
        totals: dict[str, int] = {}
        per_chunk = max(1, run.batch_size // self.frames_per_image)
        for start in range(0, images.shape[0], per_chunk):
            part = slice(start, start + per_chunk)
            sequence = _ImageShifts(self.draw_shifts(indices[part], seed), self.boundary, self.crop)
            chunk_targets = None if targets is None else targets[part]
            for logits, logit_targets in run.logits(images[part], chunk_targets, sequence):
                pairs = logits.unflatten(1, (self.passes, 2)).flatten(0, 1)  # (n * passes, 2, C), image-major
                pair_targets = None if logit_targets is None else logit_targets.repeat_interleave(self.passes)
                stats = consistency_stats(pairs, pair_targets, top_k=None)
                _add(
                    totals, num_images=logits.shape[0], num_pairs=pairs.shape[0], agreeing_pairs=stats["agreeing_pairs"]
                )
                if pair_targets is not None:
                    _add(totals, num_predictions=2 * pairs.shape[0], correct=stats["correct"].sum())
        return totals

    def summarize(self, counts: Mapping[str, Tensor | int]) -> dict[str, float]:
        out = {
            "num_images": float(counts["num_images"]),
            "consistency": int(counts["agreeing_pairs"]) / int(counts["num_pairs"]),
        }
        if int(counts.get("num_predictions", 0)):  # measured with targets
            out["accuracy"] = int(counts["correct"]) / int(counts["num_predictions"])
        return out


def _split(sequence: ShiftSequence, size: int) -> list[ShiftSequence]:
    """``sequence`` cut into consecutive sequences of ``size`` to ``2 * size - 1`` frames."""
    count = max(1, len(sequence) // size)
    bounds = [len(sequence) * i // count for i in range(count + 1)]
    parts = []
    for start, stop in itertools.pairwise(bounds):
        part = copy.copy(sequence)  # same class and mode, fewer frames
        part.shifts = sequence.shifts[start:stop]
        parts.append(part)
    return parts


class _SeparableShifts(ShiftSequence):
    """Circular shifts applied along x, then along y: for fractional shifts of even-sized images this is the
    separable ideal interpolation of the AFC code (``subpixel_shift``: upsampling with an outer product of 1-D
    low-pass masks), which differs from a single 2-D FFT phase ramp at the (H/2, W/2) frequency."""

    def __init__(self, shifts: list[tuple[float, float]]) -> None:
        super().__init__(shifts=shifts, mode="circular")

    def _transform(self, images: Tensor, index: int) -> Tensor:
        dx, dy = self.shifts[index]
        return shift(shift(images, dx, 0, "circular"), 0, dy, "circular")


def _grid(axis: Sequence[float]) -> list[tuple[float, float]]:
    """``(0, 0)`` first, then every other ``(dx, dy)`` with ``dx, dy`` in ``axis``."""
    return [(0, 0)] + [(dx, dy) for dy in axis for dx in axis if (dx, dy) != (0, 0)]


@dataclass(frozen=True)
class AdversarialGridProtocol(ShiftProtocol):
    """Worst-case ("adversarial") accuracy over fixed grids of shifts: an image counts only if it is correct
    unshifted and under every shift of the grid. Each grid gives its own number:

    * ``adversarial_integer``: circular shifts ``(dx, dy)``, ``dx, dy in 1 .. period - 1``.
    * ``adversarial_half_pixel``: band-limited (FFT) circular shifts ``dx, dy in -0.5, -1.5, ..,
      -(period - 1.5)``.
    * ``adversarial_crop``: zero-filled shifts ``dx, dy in -crop_margin .. crop_margin - 1``, i.e. a
      window at every position ``1 .. 2 * crop_margin`` of the image zero-padded by ``crop_margin``.

    ``accuracy`` is the unshifted accuracy. ``period`` is the authors' ``max_shift``, an exclusive bound (the image
    size for the whole group of circular shifts), renamed because elsewhere ``max_shift`` is the largest shift;
    ``max_shift=`` is still accepted, with a ``DeprecationWarning``.
    """

    period: int = 32
    crop_margin: int = 3
    max_shift: InitVar[int | None] = None

    needs_targets: ClassVar[bool] = True
    count_names: ClassVar[tuple[str, ...]] = (
        "num_images",
        "correct",
        "integer_all_correct",
        "half_pixel_all_correct",
        "crop_all_correct",
    )

    def __post_init__(self, max_shift: int | None) -> None:
        if max_shift is not None:
            warnings.warn(
                f"{self.name}: max_shift is deprecated, use period (the same number)", DeprecationWarning, stacklevel=3
            )
            object.__setattr__(self, "period", max_shift)
        check_int(self.name, "period", self.period, 2)
        check_int(self.name, "crop_margin", self.crop_margin, 1)

    @property
    def sequences(self) -> dict[str, ShiftSequence]:
        """The three grids as shift sequences, each starting with the unshifted frame."""
        integer = list(range(1, self.period))
        half_pixel = [0.5 - k for k in range(1, self.period)]
        crop = list(range(self.crop_margin - 1, -self.crop_margin - 1, -1))  # window at 1 .. 2 * margin
        return {
            "integer": ShiftSequence(shifts=_grid(integer), mode="circular"),
            "half_pixel": _SeparableShifts(_grid(half_pixel)),
            "crop": ShiftSequence(shifts=_grid(crop), mode="zeros"),
        }

    @property
    def frames_per_image(self) -> int:
        return sum(len(sequence) for sequence in self.sequences.values())

    @property
    def description(self) -> str:
        last = self.period - 1
        return (
            f"share of images correct unshifted and under every shift of a grid: circular integer (dx, dy) in "
            f"[1, {last}]^2, circular FFT half-pixel (dx, dy) in [-{last - 0.5}, -0.5]^2, zero-filled crop "
            f"shifts in [-{self.crop_margin}, {self.crop_margin - 1}]^2; one number per grid"
        )

    def check_size(self, height: int, width: int) -> None:
        for grid, sequence in self.sequences.items():
            check_fits(self.name, f"its {grid} grid", sequence, height, width)

    def _counts(
        self, run: _Runner, images: Tensor, targets: Tensor | None, indices: Tensor, seed: int
    ) -> dict[str, int]:
        totals: dict[str, int] = {"num_images": images.shape[0]}
        # Few frames per pass over the images put many images in each frame computation (iter_frame_logits
        # chunks batch_size // frames images), so per-call costs such as a half-pixel frame's FFT are shared;
        # enough frames that a forward pass is still full when there are few images.
        frames_per_pass = max(2, run.batch_size // images.shape[0])
        for grid, sequence in self.sequences.items():
            robust = torch.ones(images.shape[0], dtype=torch.bool)
            for part_index, part in enumerate(_split(sequence, frames_per_pass)):
                start = 0
                for logits, chunk_targets in run.logits(images, targets, part):
                    assert chunk_targets is not None  # needs_targets: checked before measuring
                    hits = (logits.argmax(dim=-1) == chunk_targets[:, None]).cpu()  # (n, frames)
                    robust[start : start + hits.shape[0]] &= hits.all(dim=1)
                    if grid == "integer" and part_index == 0:
                        _add(totals, correct=hits[:, 0].sum())  # frame 0 is the unshifted image
                    start += hits.shape[0]
            _add(totals, **{f"{grid}_all_correct": robust.sum()})
        return totals

    def summarize(self, counts: Mapping[str, Tensor | int]) -> dict[str, float]:
        num_images = int(counts["num_images"])
        out = {"num_images": float(num_images), "accuracy": int(counts["correct"]) / num_images}
        for grid in ("integer", "half_pixel", "crop"):
            out[f"adversarial_{grid}"] = int(counts[f"{grid}_all_correct"]) / num_images
        return out


@dataclass(frozen=True)
class FlipProbabilityProtocol(ShiftProtocol):
    """Flip probability along a translation sequence: the share of consecutive frames whose top-1 differs.

    The frames are the image shifted by each of ``shifts`` in turn, zero-filled (black borders).
    """

    shifts: tuple[tuple[int, int], ...]

    count_names: ClassVar[tuple[str, ...]] = ("num_images", "flips", "num_predictions", "correct")

    def __post_init__(self) -> None:
        _ = self.sequence  # building the ShiftSequence validates the shifts (>= 2 finite (dx, dy) pairs)

    @property
    def sequence(self) -> ShiftSequence:
        """The translation sequence."""
        return ShiftSequence(shifts=list(self.shifts), mode="zeros")

    @property
    def frames_per_image(self) -> int:
        return len(self.shifts)

    @property
    def description(self) -> str:
        first, last = self.shifts[0], self.shifts[-1]
        return (
            f"flip probability over {len(self.shifts)} zero-filled shifts {first} .. {last} (dx, dy): share of "
            "consecutive frames whose top-1 labels differ"
        )

    def check_size(self, height: int, width: int) -> None:
        check_fits(self.name, "its shift sequence", self.sequence, height, width)

    def _counts(
        self, run: _Runner, images: Tensor, targets: Tensor | None, indices: Tensor, seed: int
    ) -> dict[str, int]:
        totals: dict[str, int] = {}
        for logits, chunk_targets in run.logits(images, targets, self.sequence):
            stats = consistency_stats(logits, chunk_targets, top_k=None)
            _add(totals, num_images=logits.shape[0], flips=stats["flips"].sum())
            if chunk_targets is not None:
                _add(totals, num_predictions=logits.shape[0] * logits.shape[1], correct=stats["correct"].sum())
        return totals

    def summarize(self, counts: Mapping[str, Tensor | int]) -> dict[str, float]:
        num_images = int(counts["num_images"])
        out = {
            "num_images": float(num_images),
            "flip_probability": int(counts["flips"]) / (num_images * (len(self.shifts) - 1)),
        }
        if int(counts.get("num_predictions", 0)):  # measured with targets
            out["accuracy"] = int(counts["correct"]) / int(counts["num_predictions"])
        return out


_ZHANG = "Zhang, Making Convolutional Networks Shift-Invariant Again, ICML 2019"
_APS = "Chaman & Dokmanic, Truly Shift-Invariant Convolutional Neural Networks, CVPR 2021"

#: The published protocols by name. Variants: ``dataclasses.replace(PROTOCOLS[name], ...)``.
PROTOCOLS: Mapping[str, ShiftProtocol] = MappingProxyType(
    {
        protocol.name: protocol
        for protocol in (
            RandomPairProtocol(
                name="zhang2019",
                citation=_ZHANG,
                source="adobe/antialiased-cnns main.py (validate_shift, --epochs-shift 5); CIFAR padding of "
                "achaman2/truly_shift_invariant_cnns",
                shift_range=(-2, 3),
                boundary="zeros",
                passes=5,
            ),
            RandomPairProtocol(
                name="aps2021_standard",
                citation=_APS,
                source="achaman2/truly_shift_invariant_cnns "
                "cifar10_code/utils/for_randomcrop_exps/train_validate_random_crop.py (evaluate_random_crop)",
                shift_range=(-2, 3),
                boundary="zeros",
                passes=1,
            ),
            RandomPairProtocol(
                name="aps2021_circular",
                citation=_APS,
                source="achaman2/truly_shift_invariant_cnns "
                "cifar10_exps/utils/for_circular_pad_exps/train_validate_circular.py (evaluate_circular)",
                shift_range=(-3, 2),
                boundary="circular",
                passes=1,
            ),
            AdversarialGridProtocol(
                name="afc2023_adversarial",
                citation="Michaeli, Michaeli & Soudry, Alias-Free Convnets: Fractional Shift Invariance via "
                "Polynomial Activations, CVPR 2023",
                source="hmichaeli/alias_free_convnets shift_eval.py (evaluate_full_adversarial_shift_metrics with "
                "max_shift=32 and half_shift, evaluate_adversarial_crop_shift_metrics), models/ideal_lpf.py",
            ),
            FlipProbabilityProtocol(
                name="imagenet_p_flip",
                citation="Hendrycks & Dietterich, Benchmarking Neural Network Robustness to Common Corruptions "
                "and Perturbations, ICLR 2019",
                source="hendrycks/robustness ImageNet-P/create_p/make_cifar_p.py (translate) and "
                "ImageNet-P/cifar-p-eval.py (flip_prob)",
                shifts=tuple((dx, 0) for dx in range(-7, 9)),
            ),
        )
    }
)


def get_protocol(name: str | ShiftProtocol) -> ShiftProtocol:
    """The protocol called ``name`` (a :class:`ShiftProtocol` passes through); ValueError lists the valid names."""
    if isinstance(name, ShiftProtocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_inputs(
    protocol: ShiftProtocol, images: Any, targets: Any, indices: Any, seed: Any, batch_size: Any
) -> Tensor:
    owner = protocol.name
    check_images(owner, "images", images, uint8=True)
    if images.shape[0] == 0:
        raise ValueError(f"{owner}: images must hold at least one image, got shape {tuple(images.shape)}")
    check_unit_range(owner, "images", images)  # shifts fill with 0 = black before normalize is applied
    if targets is None and protocol.needs_targets:
        raise ValueError(f"{owner}: targets must be (N,) class indices (the protocol measures accuracy), got None")
    check_targets(owner, "targets", targets, images.shape[0])
    check_int(owner, "seed", seed, 0)
    check_int(owner, "batch_size", batch_size, 1)
    if indices is None:
        return torch.arange(images.shape[0])
    expected = f"a tensor of N={images.shape[0]} non-negative integer (global) image indices"
    if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"{owner}: indices must be {expected}, got {indices!r}")
    if indices.shape != (images.shape[0],) or (indices.numel() and int(indices.min()) < 0):
        raise ValueError(f"{owner}: indices must be {expected}, got {indices!r}")
    return indices.cpu()


def protocol_counts(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    name: str | ShiftProtocol,
    *,
    indices: Tensor | None = None,
    normalize: Normalization | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    forward_fn: ForwardFn | None = None,
    outputs: str = "logits",
) -> dict[str, Tensor]:
    """Additive counts (int64 tensors on the CPU) of protocol ``name`` on ``images``.

    Counts from disjoint parts of a dataset add up: sum them (e.g. ``all_reduce`` under DDP) and pass the sums
    to ``PROTOCOLS[name].summarize``. ``indices`` are the images' global dataset indices (default
    ``0 .. N-1``); random shifts depend only on ``seed`` and the index, so give each process the indices of its
    shard to reproduce the single-process result exactly. Other arguments as in :func:`evaluate_protocol`.
    """
    protocol = get_protocol(name)
    targets = class_targets(targets)  # float 0./1. targets of a binary model become int64 (N,)
    indices = _check_inputs(protocol, images, targets, indices, seed, batch_size)
    protocol.check_size(images.shape[-2], images.shape[-1])
    run = _Runner(
        model,
        check_normalize("protocol_counts", "normalize", normalize),
        batch_size,
        torch.device(device) if device is not None else module_device(model),
        forward_fn,
        check_outputs("protocol_counts", outputs),
    )
    with evaluation_mode(model):
        counts = protocol._counts(run, images, targets, indices, seed)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in counts.items()}


def evaluate_protocol(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    name: str | ShiftProtocol,
    *,
    normalize: Normalization | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    forward_fn: ForwardFn | None = None,
    indices: Tensor | None = None,
    outputs: str = "logits",
) -> dict[str, float]:
    """Measure ``model`` with the published protocol ``name`` (a key of :data:`PROTOCOLS`, or a definition).

    Args:
        model: a classifier returning ``(N, C)`` logits, or one binary logit ``(N,)`` / ``(N, 1)`` (two classes, as
            in :func:`~invariance_lightning.metrics.outputs.class_logits`; or use ``forward_fn``); run in eval mode
            without autograd, every submodule's mode restored afterwards.
        images: ``(N, C, H, W)`` uint8, or float in [0, 1].
        targets: ``(N,)`` class indices (or floats holding whole numbers, e.g. ``0.``/``1.``), or None (required by
            ``afc2023_adversarial``); with targets the random-shift and flip protocols also report ``accuracy``
            over the frames they classify.
        name: protocol name or a :class:`ShiftProtocol` (e.g. a ``dataclasses.replace`` variant).
        normalize: ``(mean, std)`` applied after the shift, so zero fill is black.
        seed: seeds the random shifts (per image, with its index), independently of the global RNG.
        batch_size: at most this many frames per forward pass.
        device: where to run; defaults to the model's device.
        forward_fn: ``forward_fn(model, x) -> logits`` for models whose ``forward`` returns more.
        indices: global indices of ``images`` (default ``0 .. N-1``), see :func:`protocol_counts`.
        outputs: ``"logits"`` (default) or ``"probabilities"`` for a model ending in a softmax or sigmoid, as in
            :func:`~invariance_lightning.metrics.evaluate.evaluate_sequences`.

    Returns:
        ``num_images`` and the protocol's numbers as fractions in [0, 1]: ``consistency`` (``zhang2019``,
        ``aps2021_*``), ``flip_probability`` (``imagenet_p_flip``), ``accuracy`` and
        ``adversarial_{integer,half_pixel,crop}`` (``afc2023_adversarial``).
    """
    protocol = get_protocol(name)
    counts = protocol_counts(
        model,
        images,
        targets,
        protocol,
        indices=indices,
        normalize=normalize,
        seed=seed,
        batch_size=batch_size,
        device=device,
        forward_fn=forward_fn,
        outputs=outputs,
    )
    return protocol.summarize(counts)


__all__ = [
    "PROTOCOLS",
    "AdversarialGridProtocol",
    "FlipProbabilityProtocol",
    "RandomPairProtocol",
    "ShiftProtocol",
    "evaluate_protocol",
    "get_protocol",
    "image_generator",
    "protocol_counts",
]
