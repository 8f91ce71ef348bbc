"""Property-based fuzzing of the measurement core against an oracle that knows which inputs are valid.

Hypothesis draws valid inputs: sequences, images, logits, targets and settings that the documentation
allows. Each must give the right result, compared with an independent calculation where that is cheap
(index arithmetic and ``torch.roll`` for whole-pixel shifts, argmax counting for flip rates, a Python softmax
for the MAC, sorting for top-k ranks). Whether a sequence fits an image size is decided by the oracle from the
documented rules; a misfit must raise ``ValueError`` naming the image size. Next to every drawn case, each
argument in turn is replaced by every value of its invalid list (``fill=inf``, ``T=1`` logits, ``top_k=0``,
integer images, ...): each must raise the documented exception with a message that names the argument.
So a clear error on a valid input fails, and so does a result for an invalid one.

The cases are fixed: ``derandomize=True``, no example database, and every setting that shapes generation is
given here, not taken from a profile, so every run tries the same inputs whatever else is collected.
"""

from __future__ import annotations

import itertools
import math
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, Verbosity, event, given, note, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invariance_lightning import ScaleSequence, ShiftSequence, TransformConsistency, evaluate_invariance
from invariance_lightning.metrics import transform_consistency

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    deadline=5000,  # ms per case: a (near-)hang fails instead of stalling the suite
    backend="hypothesis",
    report_multiple_bugs=False,
    print_blob=False,
    stateful_step_count=50,
    verbosity=Verbosity.normal,
    suppress_health_check=[HealthCheck.too_slow],
)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NON_FINITE = (math.inf, -math.inf, math.nan)


def rejects(call: Callable[[], Any], error: type[Exception], names: str, what: str) -> None:
    """Assert that ``call()`` raises ``error`` with a message containing ``names`` (``what`` describes the input)."""
    with pytest.raises(error, match=re.escape(names)):
        note(f"invalid: {what}")
        call()


def mostly(usual: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 4) -> st.SearchStrategy:
    """``usual`` most of the time, ``rare`` about once in ``one_in`` draws (and never as the simplest choice)."""
    return st.sampled_from([usual] * (one_in - 1) + [rare]).flatmap(lambda chosen: chosen)


# -- sequences: construction ---------------------------------------------------------------------
small_numbers = st.one_of(st.integers(-3, 4), st.integers(-12, 16).map(lambda v: v / 4))
shift_pairs = st.tuples(small_numbers, small_numbers)


def common_kwargs(draw, modes: tuple[str, ...]) -> dict[str, Any]:
    """Valid ``mode``, ``fill``, ``embed`` and (crop mode only) ``crop_size``."""
    kwargs = {"mode": draw(st.sampled_from(modes)), "fill": draw(st.sampled_from([0.0, 0.5, -1.0, 2]))}
    embed = draw(mostly(st.none(), st.sampled_from([0.3, 0.5, 0.75, 1.0]), 3))
    if embed is not None:
        kwargs["embed"] = embed
    if kwargs["mode"] == "crop" and draw(st.booleans()):
        kwargs["crop_size"] = draw(st.integers(1, 8) | st.tuples(st.integers(1, 8), st.integers(1, 8)))
    return kwargs


Invalid = list[tuple[str, Any, type[Exception]]]


def common_invalid(kwargs: dict[str, Any], bad_mode: str) -> Invalid:
    """Every invalid value of the arguments both sequence classes share, for valid ``kwargs``, with its error:
    ``TypeError`` for a value of the wrong type, ``ValueError`` for one of the right type but not allowed."""
    # crop_size is only allowed in crop mode, where it must be a positive int or (height, width) pair
    if kwargs["mode"] == "crop":
        crop_sizes = [(v, ValueError) for v in (0, -1, (1, 2, 3), (0, 3))] + [(v, TypeError) for v in (2.5, True)]
    else:
        crop_sizes = [(4, ValueError)]
    return [
        ("mode", bad_mode, ValueError),
        *(("fill", v, ValueError) for v in NON_FINITE),
        *(("fill", v, TypeError) for v in ("0", None, True)),
        *(("embed", v, ValueError) for v in (*NON_FINITE, 0.0, -0.5, 1.5)),
        *(("embed", v, TypeError) for v in (True, "0.5")),
        *(("crop_size", v, error) for v, error in crop_sizes),
    ]


@st.composite
def shift_cases(draw) -> tuple[dict[str, Any], Invalid]:
    """Valid ShiftSequence kwargs and every (argument, invalid value) to try in their place."""
    kwargs = common_kwargs(draw, ShiftSequence.modes)
    invalid = common_invalid(kwargs, "wrap")
    whole = kwargs["mode"] == "mask"  # integer shifts only
    if draw(st.booleans()):
        step = draw(st.sampled_from([1, 2] if whole else [1, 0.5, 0.25, 2]))
        invalid += [("step", 0.5, ValueError)] if whole else []
        kwargs.update(step=step, max_shift=draw(st.integers(1, 3)) * step, grid=draw(st.booleans()))
        kwargs["direction"] = draw(st.sampled_from(["diagonal", "horizontal", "vertical"]))
        # None: neither max_shift nor shifts; max_shift + 0.1: not a whole multiple of step
        invalid += [("max_shift", v, ValueError) for v in (*NON_FINITE, 0, -1, None, kwargs["max_shift"] + 0.1)]
        invalid += [("max_shift", v, TypeError) for v in (True, "2")]
        invalid += [("step", v, ValueError) for v in (*NON_FINITE, 0, -1)]
        invalid += [("step", v, TypeError) for v in (True, "1")]
        invalid += [("shifts", [(0, 0), (1, 1)], ValueError)]  # together with max_shift
    else:
        pairs = st.tuples(st.integers(-3, 4), st.integers(-3, 4)) if whole else shift_pairs
        kwargs["shifts"] = draw(st.lists(pairs, min_size=2, max_size=6))
        invalid += [("shifts", [(0, 0), (0.5, 1)], ValueError)] if whole else []
        bad_shifts = [[], [(0, 0)], [(0, 0), (1,)], "ab", *([(0, 0), (v, 1)] for v in NON_FINITE)]
        invalid += [("shifts", v, ValueError) for v in bad_shifts] + [("grid", True, ValueError)]
        invalid += [("shifts", v, TypeError) for v in ([(0, 0), ("1", 0)], [(0, 0), (True, 0)])]
    invalid += [("direction", v, ValueError) for v in ("up", "diagnol")] + [("direction", None, TypeError)]
    return kwargs, invalid


@st.composite
def scale_cases(draw) -> tuple[dict[str, Any], Invalid]:
    """Valid ScaleSequence kwargs and every (argument, invalid value) to try in their place."""
    factors = draw(st.lists(st.integers(50, 160).map(lambda v: v / 100), min_size=2, max_size=5))
    kwargs = {"factors": factors, **common_kwargs(draw, ScaleSequence.modes)}
    bad_factors = [[], [1.0], [1.0, 0.0], [1.0, -1.0], *([1.0, v] for v in NON_FINITE)]
    wrong_types = ["1.0", 3, [1.0, "1"], [1.0, True]]
    invalid = [("factors", v, ValueError) for v in bad_factors] + [("factors", v, TypeError) for v in wrong_types]
    return kwargs, common_invalid(kwargs, "circular") + invalid


def build(kwargs: dict[str, Any]) -> ShiftSequence | ScaleSequence:
    return (ScaleSequence if "factors" in kwargs else ShiftSequence)(**kwargs)


def expected_shifts(kwargs: dict[str, Any]) -> list[tuple[float, float]]:
    """The frames ShiftSequence documents for ``kwargs``, computed directly."""
    if "shifts" in kwargs:
        return [(float(dx), float(dy)) for dx, dy in kwargs["shifts"]]
    count = round(kwargs["max_shift"] / kwargs["step"])
    offsets = [k * kwargs["step"] for k in range(count + 1)]
    if kwargs["grid"]:  # one row per dy; even rows left to right, odd rows right to left
        return [
            (float(dx), float(dy))
            for row, dy in enumerate(offsets)
            for dx in (offsets if row % 2 == 0 else offsets[::-1])
        ]
    unit = {"diagonal": (1, 1), "horizontal": (1, 0), "vertical": (0, 1)}[kwargs["direction"]]
    return [(float(d * unit[0]), float(d * unit[1])) for d in offsets]


@FUZZ
@given(case=st.one_of(shift_cases(), scale_cases()))
def test_sequence_construction(case):
    kwargs, invalid = case
    note(f"kwargs={kwargs!r}")
    sequence = build(kwargs)
    if isinstance(sequence, ShiftSequence):
        assert [(float(dx), float(dy)) for dx, dy in sequence.shifts] == expected_shifts(kwargs)
    else:
        assert sequence.factors == [float(f) for f in kwargs["factors"]]
    assert (sequence.mode, sequence.fill, sequence.embed) == (
        kwargs["mode"],
        float(kwargs["fill"]),
        kwargs.get("embed"),
    )
    assert len(sequence.frame_values) == len(sequence.frame_labels) == len(sequence) >= 2
    assert all(math.isfinite(v) for v in sequence.frame_values)
    assert sequence == build(kwargs) and hash(sequence) == hash(build(kwargs))
    assert pickle.loads(pickle.dumps(sequence)) == sequence
    for name, value, error in invalid:
        rejects(lambda: build({**kwargs, name: value}), error, name, f"{name}={value!r}")


# -- sequences: frames ---------------------------------------------------------------------------
def images_of(draw, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Deterministic content from a drawn seed: [0, 1) for float dtypes, [0, 255) for uint8."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.rand(shape, generator=generator)
    return (values * 255).to(dtype) if dtype == torch.uint8 else values.to(dtype)


def embedded_box(height: int, width: int, embed: float | None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the object on the canvas: ``embed`` of the size, at least 1 px, centred."""
    if embed is None:
        return 0, 0, height, width
    obj_h, obj_w = max(1, round(height * embed)), max(1, round(width * embed))
    return (height - obj_h) // 2, (width - obj_w) // 2, obj_h, obj_w


def crop_window(sequence: ShiftSequence, height: int, width: int) -> tuple[int, int]:
    """``crop_size``, or the largest centred window that every (ceil of the) shift keeps inside the image."""
    max_dx = math.ceil(max(abs(dx) for dx, _ in sequence.shifts))
    max_dy = math.ceil(max(abs(dy) for _, dy in sequence.shifts))
    return sequence.crop_size or (height - 2 * max_dy, width - 2 * max_dx)


def rescaled(size: int, factor: float) -> int:
    return max(1, round(size * factor))


def fit_problem(sequence: ShiftSequence | ScaleSequence, height: int, width: int) -> str | None:
    """Why ``sequence`` cannot make frames of ``height`` x ``width`` images (None if it can), from the documented rules."""
    if isinstance(sequence, ShiftSequence):
        max_dx = max(abs(dx) for dx, _ in sequence.shifts)
        max_dy = max(abs(dy) for _, dy in sequence.shifts)
        if sequence.embed is not None:  # the whole object must stay on the canvas
            top, left, _, _ = embedded_box(height, width, sequence.embed)
            if max_dx > left or max_dy > top:
                return "shift beyond the embed margin"
        if sequence.mode != "crop":
            return None if max_dx < width and max_dy < height else "shift as large as the image"
        crop_h, crop_w = crop_window(sequence, height, width)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        inside = all(
            0 <= top - dy and top - dy + crop_h <= height and 0 <= left - dx and left - dx + crop_w <= width
            for dx, dy in sequence.shifts
        )
        return None if crop_h > 0 and crop_w > 0 and inside else "crop window leaves the image"
    if sequence.embed is not None and sequence.embed * max(sequence.factors) > 1 + 1e-9:
        return "object enlarged beyond the canvas"
    small_h, small_w = rescaled(height, min(sequence.factors)), rescaled(width, min(sequence.factors))
    if sequence.mode == "reflect" and (height - small_h >= small_h or width - small_w >= small_w):
        return "reflection padding as large as the shrunk image"
    if sequence.mode == "crop":
        crop_h, crop_w = sequence.crop_size or (small_h, small_w)
        if crop_h > small_h or crop_w > small_w:
            return "crop larger than the smallest rescaled image"
    return None


def canvas_of(sequence: ShiftSequence | ScaleSequence, images: Tensor) -> Tensor:
    """The input of the geometric transform: ``images``, or with ``embed`` the shrunk image centred on ``fill``."""
    if sequence.embed is None:
        return images
    height, width = images.shape[-2:]
    top, left, obj_h, obj_w = embedded_box(height, width, sequence.embed)
    small = images
    if (obj_h, obj_w) != (height, width):  # antialiased bilinear, in float32 at least (no CPU half kernel)
        work = images.to(torch.promote_types(images.dtype, torch.float32))
        small = F.interpolate(work, size=(obj_h, obj_w), mode="bilinear", antialias=True, align_corners=False)
    canvas = torch.full_like(images, sequence.fill)
    canvas[..., top : top + obj_h, left : left + obj_w] = small.to(images.dtype)
    return canvas


def integer_shift_by_indexing(images: Tensor, dx: int, dy: int, mode: str, fill: float) -> Tensor:
    """out[y, x] = in[y - dy, x - dx], with the mode's rule for source indices outside the image."""
    height, width = images.shape[-2:]
    rows, cols = torch.arange(height) - dy, torch.arange(width) - dx
    if mode == "circular":
        return images[..., rows % height, :][..., cols % width]
    if mode == "reflect":  # mirror about the border pixels: -1 -> 1, H -> H - 2
        rows = torch.where(rows < 0, -rows, torch.where(rows >= height, 2 * (height - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols >= width, 2 * (width - 1) - cols, cols))
        return images[..., rows, :][..., cols]
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    gathered = images[..., rows.clamp(0, height - 1), :][..., cols.clamp(0, width - 1)]
    return torch.where(inside, gathered, torch.full_like(gathered, fill))


def tolerance(images: Tensor) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(images.dtype, 1e-4) * max(1.0, float(images.abs().max()))


def output_size(sequence: ShiftSequence | ScaleSequence, height: int, width: int) -> tuple[int, int]:
    if sequence.mode != "crop":
        return height, width
    if isinstance(sequence, ShiftSequence):
        return crop_window(sequence, height, width)
    return sequence.crop_size or (rescaled(height, min(sequence.factors)), rescaled(width, min(sequence.factors)))


def check_frame(sequence: ShiftSequence | ScaleSequence, images: Tensor, index: int, frame: Tensor) -> None:
    """Compare a frame with an independent construction where one is cheap, else with bounds it must obey."""
    height, width = images.shape[-2:]
    out_h, out_w = output_size(sequence, height, width)
    assert frame.shape == (*images.shape[:2], out_h, out_w) and frame.dtype == images.dtype
    if images.numel() == 0:
        return
    assert bool(torch.isfinite(frame).all()), "finite images and a finite fill give finite frames"
    canvas = canvas_of(sequence, images)
    if isinstance(sequence, ShiftSequence) and all(float(v).is_integer() for v in sequence.shifts[index]):
        dx, dy = (int(v) for v in sequence.shifts[index])
        if sequence.mode == "crop":  # the window moves against the content
            top, left = (height - out_h) // 2 - dy, (width - out_w) // 2 - dx
            expected = canvas[..., top : top + out_h, left : left + out_w]
        elif sequence.mode == "mask":  # rolled by the shift, it is the zero-filled shift: pixel for pixel
            expected = torch.roll(
                integer_shift_by_indexing(canvas, dx, dy, "zeros", sequence.fill), (-dy, -dx), (-2, -1)
            )
        else:
            expected = integer_shift_by_indexing(canvas, dx, dy, sequence.mode, sequence.fill)
            if sequence.mode == "circular":
                assert torch.equal(frame, torch.roll(canvas, shifts=(dy, dx), dims=(-2, -1)))
        assert torch.equal(frame, expected), "whole-pixel frames must copy pixels exactly"
        return
    if isinstance(sequence, ScaleSequence) and sequence.factors[index] == 1.0:
        top, left = (height - out_h) // 2, (width - out_w) // 2
        assert torch.equal(frame, canvas[..., top : top + out_h, left : left + out_w]), "factor 1 is the identity"
        return
    if isinstance(sequence, ShiftSequence) and sequence.mode == "circular":
        # a band-limited circular shift keeps every channel's mean (the spectrum's DC term)
        torch.testing.assert_close(
            frame.double().mean((-2, -1)), canvas.double().mean((-2, -1)), atol=tolerance(images), rtol=0
        )
        return
    if isinstance(sequence, ScaleSequence) and sequence.mode == "zeros" and sequence.embed is None:
        # a shrunk image is centred on fill: everything outside its box is exactly fill
        small_h, small_w = (min(n, rescaled(n, sequence.factors[index])) for n in (height, width))
        top, left = (height - small_h) // 2, (width - small_w) // 2
        outside = torch.ones(height, width, dtype=torch.bool)
        outside[top : top + small_h, left : left + small_w] = False
        assert bool((frame[..., outside] == sequence.fill).all()), "the padding of a shrunk image is fill"
    # bilinear shifts, antialiased resizing and padding only mix pixels (and fill) convexly
    fill = [sequence.fill] if sequence.mode == "zeros" or sequence.embed is not None else []
    low, high = min([float(images.min()), *fill]), max([float(images.max()), *fill])
    assert low - tolerance(images) <= float(frame.min()) and float(frame.max()) <= high + tolerance(images)


@st.composite
def valid_sequences(draw) -> ShiftSequence | ScaleSequence:
    """A constructible sequence; whether it fits a given image size is up to :func:`fit_problem`."""
    kwargs, _ = draw(st.one_of(shift_cases(), scale_cases()))
    return build(kwargs)


def image_shapes(max_side: int, min_count: int) -> st.SearchStrategy:
    """(N, C, H, W): sides mostly from 4 up, sometimes 1 to 3 (where most sequences no longer fit)."""
    side = mostly(st.integers(4, max_side), st.integers(1, 3))
    count = mostly(st.integers(max(min_count, 1), 3), st.just(min_count))
    return st.tuples(count, st.integers(1, 3), side, side)


@FUZZ
@given(sequence=valid_sequences(), shape=image_shapes(12, 0), dtype=st.sampled_from(FLOAT_DTYPES), data=st.data())
def test_frame(sequence, shape, dtype, data):
    images = images_of(data.draw, shape, dtype)
    height, width = shape[-2:]
    problem = fit_problem(sequence, height, width)
    note(f"{sequence!r}; images {shape} {dtype}; fit problem: {problem}")
    event("fits" if problem is None else "does not fit")
    for index in range(len(sequence)):
        if problem is None:
            check_frame(sequence, images, index, sequence.frame(images, index))
        else:
            rejects(lambda: sequence.frame(images, index), ValueError, f"{height}x{width}", problem)
    index = data.draw(st.integers(0, len(sequence) - 1), "index")
    bad_images = [
        (images.to(torch.uint8), TypeError),
        (images.to(torch.bool), TypeError),
        (images.tolist(), TypeError),
        (images.flatten(0, 1), ValueError),
        (images[None], ValueError),
    ]
    for bad, error in bad_images:
        rejects(lambda: sequence.frame(bad, index), error, "images", f"images {type(bad).__name__}")
    for bad, error in (
        (-1, IndexError),
        (len(sequence), IndexError),
        (50, IndexError),
        (0.0, TypeError),
        (True, TypeError),
    ):
        rejects(lambda: sequence.frame(images, bad), error, "index", f"index {bad!r}")


@FUZZ
@given(data=st.data(), height=st.integers(1, 10), width=st.integers(1, 10), dtype=st.sampled_from(FLOAT_DTYPES))
def test_circular_integer_shift_equals_torch_roll(data, height, width, dtype):
    images = images_of(data.draw, (2, 2, height, width), dtype)
    dx = data.draw(st.integers(1 - width, width - 1), "dx")
    dy = data.draw(st.integers(1 - height, height - 1), "dy")
    sequence = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="circular")
    assert torch.equal(sequence.frame(images, 1), torch.roll(images, shifts=(dy, dx), dims=(-2, -1)))
    assert torch.equal(sequence.frame(images, 0), images)
    for too_far in ((width, dy), (-width, dy), (dx, height), (dx, -height)):
        rejects(
            lambda: ShiftSequence(shifts=[(0, 0), too_far], mode="circular").frame(images, 1),
            ValueError,
            f"{height}x{width}",
            f"shift {too_far}",
        )


# -- metrics -------------------------------------------------------------------------------------
@st.composite
def metric_cases(draw) -> tuple[Tensor, Tensor | None, int | None]:
    """Valid (logits, target, top_k): many ties, every float dtype, top_k also above C."""
    shape = (draw(st.integers(1, 5)), draw(st.integers(2, 5)), draw(st.integers(1, 6)))
    count = shape[0] * shape[1] * shape[2]
    pool = draw(st.sampled_from([st.integers(-2, 2).map(float), st.floats(-50, 50)]))
    values = torch.tensor(draw(st.lists(pool, min_size=count, max_size=count)), dtype=torch.float64).reshape(shape)
    logits = values.to(draw(st.sampled_from(FLOAT_DTYPES)))
    target = None
    if draw(st.booleans()):
        target = torch.tensor(draw(st.lists(st.integers(0, shape[2] - 1), min_size=shape[0], max_size=shape[0])))
    return logits, target, draw(st.sampled_from([None, *range(1, 9)]))


def invalid_metric_inputs(logits: Tensor, target: Tensor | None) -> list[tuple[str, Any, Any, type[Exception]]]:
    """Every (argument, logits, target, documented error) obtained by breaking one of the valid inputs."""
    cases: list[tuple[str, Any, Any, type[Exception]]] = []
    for bad, error in (
        (logits.tolist(), TypeError),
        (None, TypeError),
        (logits.to(torch.int64), TypeError),
        (logits[0], ValueError),
        (logits[None], ValueError),
        (logits[:, :1], ValueError),
        (logits[:, :, :0], ValueError),
        (logits[:0], ValueError),
    ):
        cases.append(("logits", bad, None, error))
    for value in NON_FINITE:
        broken = logits.clone()
        broken.view(-1)[broken.numel() // 2] = value
        cases.append(("logits", broken, None, ValueError))
    if target is not None:
        for bad, error in (
            (target.float(), TypeError),
            (target.tolist(), TypeError),
            (target[:-1], ValueError),
            (target[None], ValueError),
        ):
            cases.append(("target", logits, bad, error))
        for value in (-1, logits.shape[2]):  # outside [0, C)
            broken = target.clone()
            broken[-1] = value
            cases.append(("target", logits, broken, ValueError))
    return cases


def first_max(row: list[float]) -> int:
    """Index of the first largest value (torch.argmax's documented tie rule)."""
    return max(range(len(row)), key=lambda c: (row[c], -c))


def softmax(frame: list[float]) -> list[float]:
    exps = [math.exp(v - max(frame)) for v in frame]
    return [e / sum(exps) for e in exps]


def independent_metrics(logits: Tensor, target: Tensor | None, top_k: int | None) -> dict[str, Any]:
    """Every metric by direct counting in Python; ``top{k}_distance`` only when no frame has tied logits."""
    rows = logits.double().tolist()  # (N, T, C) nested lists, exact for every float dtype
    num_images, num_frames, num_classes = len(rows), len(rows[0]), len(rows[0][0])
    preds = [[first_max(frame) for frame in image] for image in rows]
    transitions = [(i, t) for i in range(num_images) for t in range(1, num_frames)]
    agree = [p[a] == p[b] for p in preds for a in range(num_frames) for b in range(a + 1, num_frames)]
    # MAC: the probability of frame t-1's top-1 class, before and after
    changes = [
        abs(softmax(rows[i][t])[preds[i][t - 1]] - softmax(rows[i][t - 1])[preds[i][t - 1]]) for i, t in transitions
    ]
    per_transition = [
        sum(preds[i][t] != preds[i][t - 1] for i in range(num_images)) / num_images for t in range(1, num_frames)
    ]
    out: dict[str, Any] = {
        "flip_rate": sum(preds[i][t] != preds[i][t - 1] for i, t in transitions) / len(transitions),
        "consistency": sum(agree) / len(agree),
        "mac": sum(changes) / len(changes),
        "per_frame_flip_rate": per_transition,
    }
    if top_k is not None and all(len(set(frame)) == num_classes for image in rows for frame in image):
        ranks = [[sorted(range(num_classes), key=lambda c: -frame[c])[:top_k] for frame in image] for image in rows]
        moved = [sum(a != b for a, b in zip(ranks[i][t - 1], ranks[i][t])) for i, t in transitions]
        out[f"top{top_k}_distance"] = sum(moved) / len(moved)  # slicing [:k] keeps all C ranks when k > C
    if target is not None:
        hits = [[p == int(y) for p in row] for row, y in zip(preds, target)]
        out["accuracy"] = sum(map(sum, hits)) / (num_images * num_frames)
        out["worst_case_accuracy"] = sum(all(h) for h in hits) / num_images
        out["per_frame_accuracy"] = [sum(h[t] for h in hits) / num_images for t in range(num_frames)]
    return out


@FUZZ
@given(case=metric_cases(), cuts=st.lists(st.integers(0, 5), max_size=3))
def test_metric(case, cuts):
    logits, target, top_k = case
    note(f"logits {tuple(logits.shape)} {logits.dtype}, target {target}, top_k={top_k}")
    result = transform_consistency(logits, target, top_k=top_k)
    expected = independent_metrics(logits, target, top_k)
    keys = {"flip_rate", "consistency", "mac", "per_frame_flip_rate"}
    keys |= {f"top{top_k}_distance"} if top_k is not None else set()
    keys |= {"accuracy", "worst_case_accuracy", "per_frame_accuracy"} if target is not None else set()
    assert set(result) == keys
    for key, value in expected.items():
        torch.testing.assert_close(
            result[key].double(), torch.tensor(value, dtype=torch.float64), atol=1e-5, rtol=0, msg=key
        )
    if top_k is not None:
        assert 0 <= float(result[f"top{top_k}_distance"]) <= min(top_k, logits.shape[2])
    # the metric over arbitrary (possibly empty) consecutive batches equals the function on all images
    metric = TransformConsistency(top_k=top_k)
    bounds = sorted({0, logits.shape[0], *(min(c, logits.shape[0]) for c in cuts)})
    for start, stop in itertools.pairwise(bounds):
        metric.update(logits[start:stop], None if target is None else target[start:stop])
    merged = metric.compute()
    assert merged.keys() == result.keys()
    for key in result:
        assert merged[key].shape == result[key].shape, key
        torch.testing.assert_close(merged[key], result[key], atol=1e-6, rtol=0, msg=key)
    # every broken input: the function and the metric raise the documented error naming the argument
    for name, bad_logits, bad_target, error in invalid_metric_inputs(logits, target):
        what = f"{name}: logits {getattr(bad_logits, 'shape', type(bad_logits))}, target {bad_target!r}"
        rejects(lambda: transform_consistency(bad_logits, bad_target, top_k=top_k), error, name, what)
        if isinstance(bad_logits, Tensor) and bad_logits.ndim == 3 and bad_logits.shape[0] == 0 and bad_target is None:
            empty = TransformConsistency(top_k=top_k)
            empty.update(bad_logits)  # an empty batch is a valid update (a DDP rank without data)...
            rejects(empty.compute, ValueError, "no images", what)  # ...but there is nothing to compute
        else:
            rejects(lambda: TransformConsistency(top_k=top_k).update(bad_logits, bad_target), error, name, what)
    for bad_top_k, error in ((0, ValueError), (-1, ValueError), (True, TypeError), (2.5, TypeError)):
        rejects(lambda: transform_consistency(logits, target, top_k=bad_top_k), error, "top_k", f"top_k={bad_top_k}")
        rejects(lambda: TransformConsistency(top_k=bad_top_k), error, "top_k", f"top_k={bad_top_k}")


# -- evaluate_invariance --------------------------------------------------------------------------
class QuadrantModel(nn.Module):
    """Four logits: the mean intensity of each image quadrant (shift-sensitive, any size, no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), 2).flatten(1)


@FUZZ
@given(
    sequence=valid_sequences(),
    shape=image_shapes(10, 1),
    dtype=st.sampled_from([*FLOAT_DTYPES, torch.uint8]),
    with_targets=st.booleans(),
    batch_size=st.sampled_from([1, 2, 3, 5, 8, 13, 100]),
    top_k=st.sampled_from([None, 1, 3, 4, 5, 6]),  # 5 and 6 exceed the model's 4 classes
    loader_batch=st.integers(1, 3),
    data=st.data(),
)
def test_evaluate_invariance(sequence, shape, dtype, with_targets, batch_size, top_k, loader_batch, data):
    images = images_of(data.draw, shape, dtype)
    targets = torch.arange(shape[0]) % 4 if with_targets else None
    height, width = shape[-2:]
    problem = fit_problem(sequence, height, width)
    note(f"{sequence!r}; images {shape} {dtype}; batch_size={batch_size}, top_k={top_k}; fit problem: {problem}")
    model = QuadrantModel()

    def run(data: Any = images, labels: Any = targets, **overrides: Any) -> dict[str, Tensor]:
        options = {"batch_size": batch_size, "top_k": top_k, **overrides}
        return evaluate_invariance(model, data, labels, sequence, **options)

    for name, call, error, names in (
        ("images", lambda: run(images[:0], None), ValueError, "images is empty"),
        ("images", lambda: run(images.to(torch.int64), None), TypeError, "images"),
        ("images", lambda: run(images > 0, None), TypeError, "images"),
        ("images", lambda: run(images[0], None), ValueError, "images"),
        ("targets", lambda: run(labels=torch.zeros(shape[0] + 1, dtype=torch.long)), ValueError, "targets"),
        *(("batch_size", lambda v=v: run(batch_size=v), ValueError, "batch_size") for v in (0, -1)),
        *(("batch_size", lambda v=v: run(batch_size=v), TypeError, "batch_size") for v in (True, 2.0)),
        *(("top_k", lambda v=v: run(top_k=v), ValueError, "top_k") for v in (0, -2)),
        ("top_k", lambda: run(top_k=1.5), TypeError, "top_k"),
    ):
        rejects(call, error, names, name)
    if problem is not None:
        event("does not fit")
        rejects(run, ValueError, f"{height}x{width}", problem)
        return
    event("fits")
    result = run()
    floats = images.float() / 255 if images.dtype == torch.uint8 else images
    direct = torch.stack([model(sequence.frame(floats, t)) for t in range(len(sequence))], dim=1)
    expected = transform_consistency(direct, targets, top_k=top_k)
    assert result.keys() == expected.keys()
    if top_k is not None:
        assert f"top{top_k}_distance" in result  # named after the requested k, also above the 4 classes
    for key in result:
        torch.testing.assert_close(result[key], expected[key], atol=1e-5, rtol=0, msg=key)
    counted = independent_metrics(direct, targets, None)
    for key in ("flip_rate", "consistency"):
        assert float(result[key]) == pytest.approx(counted[key], abs=1e-6), key
    # a loader of (images, targets) batches gives the same numbers as one tensor
    batches = [
        (images[i : i + loader_batch], None if targets is None else targets[i : i + loader_batch])
        for i in range(0, shape[0], loader_batch)
    ]
    from_batches = run(batches, None)
    for key in result:
        torch.testing.assert_close(from_batches[key], result[key], atol=1e-6, rtol=0, msg=key)
