"""Property-based fuzzing of the measurement core: right answers or clear errors, never anything else.

Every call below either returns a result that satisfies independently computed invariants, or
raises ``ValueError``/``TypeError``/``IndexError`` whose message names the offending argument.
Any other exception type, a wrong result or a slow call (``deadline``) fails the test. Runs are
derandomized (the same cases every run, so CI cannot flake); ``INVARIANCE_FUZZ_EXAMPLES=2000``
with ``INVARIANCE_FUZZ_RANDOM=1`` explores further.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invariance_lightning import ScaleSequence, ShiftSequence, TransformConsistency, evaluate_invariance
from invariance_lightning.metrics import transform_consistency

FUZZ = settings(
    max_examples=int(os.environ.get("INVARIANCE_FUZZ_EXAMPLES", "100")),
    deadline=2000,  # ms per case: a (near-)hang fails instead of stalling the suite
    derandomize=not os.environ.get("INVARIANCE_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
    database=None,
)
CLEAR_ERRORS = (ValueError, TypeError, IndexError)
SEQUENCE_ARGS = ("max_shift", "step", "direction", "shifts", "grid", "mode", "fill", "crop_size", "embed", "factors")
FRAME_ARGS = ("images", "index", "shift", "crop", "embed", "factor", "reflect")
METRIC_ARGS = ("logits", "target", "top_k", "num_classes", "num_frames", "frames", "images")
EVALUATE_ARGS = ("images", "targets", "batch_size", "top_k", "shift", "crop", "embed", "factor", "reflect", "logits")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = (*FLOAT_DTYPES, torch.uint8, torch.int64, torch.bool)


def outcome(call: Callable[[], Any], names: tuple[str, ...]) -> Any:
    """``call()``'s result, or None if it raised a clear error that mentions one of ``names``."""
    try:
        result = call()
    except CLEAR_ERRORS as error:
        message = str(error)
        note(f"{type(error).__name__}: {message}")
        event(f"raised {type(error).__name__}")
        assert any(name in message for name in names), f"error does not name the argument: {message!r}"
        return None
    event("returned a result")
    return result


# -- strategies ----------------------------------------------------------------------------------
def rarely(invalid: st.SearchStrategy, valid: st.SearchStrategy, one_in: int = 6) -> st.SearchStrategy:
    """``valid`` most of the time, ``invalid`` about once in ``one_in`` draws (not the simplest choice)."""
    return st.sampled_from([valid] * (one_in - 1) + [invalid]).flatmap(lambda chosen: chosen)


odd_values = st.sampled_from([None, True, "2", math.nan, math.inf, -1, 0, [1, 2]])
small_numbers = st.one_of(st.integers(-3, 4), st.floats(-3, 4).map(lambda v: round(v * 4) / 4))
shift_pairs = st.tuples(small_numbers, small_numbers)


def maybe(draw, strategy: st.SearchStrategy, present: bool) -> Any:
    """A value for an optional argument that should be ``present``, or (rarely) a misplaced/odd one."""
    return draw(rarely(st.one_of(odd_values, strategy), strategy if present else st.just(None)))


def common_kwargs(draw, modes: tuple[str, ...], bad_mode: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``mode``, ``fill``, ``crop_size`` (crop mode only) and ``embed``; each rarely invalid."""
    kwargs["mode"] = draw(rarely(st.just(bad_mode), st.sampled_from(modes)))
    kwargs["fill"] = draw(rarely(odd_values, st.sampled_from([0.0, 0.5, -1.0])))
    kwargs["crop_size"] = maybe(draw, st.integers(1, 8) | st.tuples(st.integers(1, 8), st.integers(1, 8)),
                                kwargs["mode"] == "crop" and draw(st.booleans()))
    kwargs["embed"] = maybe(draw, st.floats(0.3, 1.0), draw(st.booleans()))
    return {key: value for key, value in kwargs.items() if value is not None}


@st.composite
def shift_kwargs(draw) -> dict[str, Any]:
    """Keyword arguments for ShiftSequence, each rarely invalid."""
    kwargs: dict[str, Any] = {}
    form = draw(rarely(st.sampled_from(["both", "neither"]), st.sampled_from(["max_shift", "shifts"]), 12))
    if form in ("max_shift", "both"):
        step = draw(rarely(odd_values, st.sampled_from([1, 0.5, 0.25, 2])))
        multiple = draw(st.integers(1, 4)) * step if isinstance(step, (int, float)) else 1
        kwargs["step"] = step
        kwargs["max_shift"] = draw(rarely(st.one_of(odd_values, st.just(multiple + 0.1)), st.just(multiple)))
        kwargs["direction"] = draw(rarely(st.just("up"), st.sampled_from(["diagonal", "horizontal", "vertical"])))
        kwargs["grid"] = draw(st.booleans())
    if form in ("shifts", "both"):
        invalid = st.one_of(st.lists(odd_values, max_size=3), st.lists(shift_pairs, max_size=1))
        kwargs["shifts"] = draw(rarely(invalid, st.lists(shift_pairs, min_size=2, max_size=6)))
        kwargs["grid"] = draw(rarely(st.just(True), st.just(False), 12))
    return common_kwargs(draw, ShiftSequence.modes, "wrap", kwargs)


@st.composite
def scale_kwargs(draw) -> dict[str, Any]:
    """Keyword arguments for ScaleSequence, each rarely invalid."""
    factor = rarely(st.sampled_from([0.0, -1.0, math.nan, "1"]), st.floats(0.5, 1.6).map(lambda v: round(v, 2)), 12)
    factors = draw(rarely(st.one_of(odd_values, st.lists(factor, max_size=1)), st.lists(factor, min_size=2, max_size=5)))
    return common_kwargs(draw, ScaleSequence.modes, "circular", {"factors": factors})


@st.composite
def sequences(draw):
    """A constructible shift or scale sequence (whether it fits a given image size is not guaranteed)."""
    while True:  # the kwargs are valid most of the time, so this rarely loops
        kwargs = draw(st.one_of(shift_kwargs(), scale_kwargs()))
        try:
            return (ScaleSequence if "factors" in kwargs else ShiftSequence)(**kwargs)
        except CLEAR_ERRORS:
            continue


@st.composite
def image_batches(draw, max_side: int = 14) -> Tensor:
    """(N, C, H, W) batches of any dtype, N may be 0; deterministic content from a drawn seed."""
    side = rarely(st.integers(1, 3), st.integers(4, max_side))
    shape = (draw(rarely(st.just(0), st.integers(1, 3), 10)), draw(st.integers(1, 3)), draw(side), draw(side))
    dtype = draw(rarely(st.sampled_from(DTYPES), st.sampled_from(FLOAT_DTYPES), 4))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.rand(shape, generator=generator) * draw(st.sampled_from([1.0, 255.0]))
    if dtype == torch.bool:
        return values > 0.5
    return values.to(dtype)


# -- sequences -----------------------------------------------------------------------------------
@FUZZ
@given(kwargs=st.one_of(shift_kwargs(), scale_kwargs()))
def test_sequence_construction_succeeds_or_names_the_argument(kwargs):
    build = ScaleSequence if "factors" in kwargs else ShiftSequence
    sequence = outcome(lambda: build(**kwargs), SEQUENCE_ARGS)
    if sequence is None:
        return
    assert len(sequence) >= 2
    assert len(sequence.frame_values) == len(sequence.frame_labels) == len(sequence)
    assert all(math.isfinite(v) for v in sequence.frame_values)
    assert sequence == build(**kwargs) and hash(sequence) == hash(build(**kwargs))
    assert repr(sequence).startswith(f"{build.__name__}(")


def reference_integer_shift(images: Tensor, dx: int, dy: int, mode: str, fill: float) -> Tensor:
    """Frame by explicit source-index arithmetic: out[y, x] = in[y - dy, x - dx] with the mode's boundary."""
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


def value_range_tolerance(images: Tensor) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(images.dtype, 1e-4) * max(1.0, float(images.abs().max()))


@FUZZ
@given(sequence=sequences(), images=image_batches(), data=st.data())
def test_frame_is_correct_or_raises_a_clear_error(sequence, images, data):
    note(repr(sequence))
    index = data.draw(rarely(st.sampled_from([-1, len(sequence), 50]), st.integers(0, len(sequence) - 1)), "index")
    frame = outcome(lambda: sequence.frame(images, index), FRAME_ARGS)
    if frame is None:
        return
    height, width = images.shape[-2:]
    assert 0 <= index < len(sequence) and images.is_floating_point()
    assert frame.shape == (*images.shape[:2], *sequence.output_size(height, width))
    assert frame.dtype == images.dtype
    if images.numel() == 0:
        return
    exact_pixels = isinstance(sequence, ShiftSequence) and all(float(v).is_integer() for v in sequence.shifts[index])
    if exact_pixels and sequence.embed is None:
        dx, dy = (int(v) for v in sequence.shifts[index])
        if sequence.mode == "crop":
            crop_h, crop_w = frame.shape[-2:]
            top, left = (height - crop_h) // 2 - dy, (width - crop_w) // 2 - dx
            expected = images[..., top : top + crop_h, left : left + crop_w]
        else:
            expected = reference_integer_shift(images, dx, dy, sequence.mode, sequence.fill)
        assert torch.equal(frame, expected.to(frame.dtype)), "whole-pixel frames must copy pixels exactly"
        return
    if isinstance(sequence, ScaleSequence) and sequence.factors[index] == 1.0 and sequence.embed is None:
        crop_h, crop_w = frame.shape[-2:]
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        assert torch.equal(frame, images[..., top : top + crop_h, left : left + crop_w]), "factor 1 is the identity"
        return
    if isinstance(sequence, ShiftSequence) and sequence.mode == "circular" and sequence.embed is None:
        # a band-limited circular shift keeps every channel's mean (the spectrum's DC term)
        torch.testing.assert_close(
            frame.double().mean((-2, -1)), images.double().mean((-2, -1)), atol=value_range_tolerance(images), rtol=0
        )
        return
    # bilinear shifts, antialiased resizing, padding and embedding only mix pixels (and fill) convexly
    fill = [sequence.fill] if sequence.mode == "zeros" or sequence.embed is not None else []
    low, high = min([float(images.min()), *fill]), max([float(images.max()), *fill])
    tolerance = value_range_tolerance(images)
    assert low - tolerance <= float(frame.min()) and float(frame.max()) <= high + tolerance


@FUZZ
@given(images=image_batches(max_side=10), data=st.data())
def test_circular_integer_shift_equals_torch_roll(images, data):
    height, width = images.shape[-2:]
    dx = data.draw(rarely(st.sampled_from([width, -width]), st.integers(1 - width, width - 1)), "dx")
    dy = data.draw(rarely(st.sampled_from([height, -height]), st.integers(1 - height, height - 1)), "dy")
    sequence = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="circular")
    frame = outcome(lambda: sequence.frame(images, 1), FRAME_ARGS)
    if frame is not None:
        assert torch.equal(frame, torch.roll(images, shifts=(dy, dx), dims=(-2, -1)))
        assert torch.equal(sequence.frame(images, 0), images)


# -- metrics -------------------------------------------------------------------------------------
@st.composite
def logits_and_targets(draw) -> tuple[Any, Any, int | None]:
    """(logits, target, top_k): mostly well-formed with many ties, sometimes malformed."""
    shape = (draw(rarely(st.just(0), st.integers(1, 5), 10)), draw(rarely(st.integers(0, 1), st.integers(2, 5), 10)),
             draw(rarely(st.just(0), st.integers(1, 6), 10)))
    count = shape[0] * shape[1] * shape[2]
    special = st.one_of(st.floats(-50, 50), st.sampled_from([math.nan, math.inf, -math.inf]))
    pool = draw(rarely(st.just(special), st.sampled_from([st.integers(-2, 2).map(float), st.floats(-50, 50)]), 8))
    values = torch.tensor(draw(st.lists(pool, min_size=count, max_size=count)), dtype=torch.float64).reshape(shape)
    logits: Any = values.to(draw(rarely(st.just(torch.int64), st.sampled_from(FLOAT_DTYPES), 10)))
    if draw(rarely(st.just(True), st.just(False), 15)):
        logits = draw(st.sampled_from([values[0] if shape[0] else values.reshape(-1), values.tolist(), None]))
    target: Any = None
    if draw(st.booleans()):
        labels = draw(st.lists(st.integers(0, max(shape[2] - 1, 0)), min_size=shape[0], max_size=shape[0]))
        if labels and draw(rarely(st.just(True), st.just(False), 10)):
            labels[draw(st.integers(0, len(labels) - 1))] = draw(st.sampled_from([-1, shape[2]]))
        target = torch.tensor(labels, dtype=torch.long)
        if draw(rarely(st.just(True), st.just(False), 10)):
            target = draw(st.sampled_from([target.float(), target[:-1], target.tolist(), target[None]]))
    top_k = draw(rarely(st.just(shape[2] + 1), st.sampled_from([None, *range(1, min(shape[2], 5) + 1)]), 10))
    return logits, target, top_k


def independent_metrics(logits: Tensor, target: Tensor | None) -> dict[str, float]:
    """Flip rate, consistency and accuracies by direct counting over images and frame pairs."""
    preds = logits.argmax(-1).tolist()
    num_frames = len(preds[0])
    flips = [p[t] != p[t - 1] for p in preds for t in range(1, num_frames)]
    agree = [p[a] == p[b] for p in preds for a in range(num_frames) for b in range(a + 1, num_frames)]
    out = {"flip_rate": sum(flips) / len(flips), "consistency": sum(agree) / len(agree)}
    if target is not None:
        hits = [[p == int(y) for p in row] for row, y in zip(preds, target)]
        out["accuracy"] = sum(map(sum, hits)) / (len(hits) * num_frames)
        out["worst_case_accuracy"] = sum(all(h) for h in hits) / len(hits)
    return out


def check_metric_values(result: dict[str, Tensor], top_k: int | None) -> None:
    for key, value in result.items():
        assert torch.isfinite(value).all(), key
        upper = top_k if key.endswith("_distance") else 1.0
        assert ((value >= 0) & (value <= upper + 1e-6)).all(), (key, value)
    if "worst_case_accuracy" in result:
        per_frame = result["per_frame_accuracy"]
        assert result["worst_case_accuracy"] <= per_frame.min() + 1e-6 and per_frame.min() <= result["accuracy"] + 1e-6
    assert bool(result["consistency"] == 1) == bool(result["flip_rate"] == 0)


@FUZZ
@given(case=logits_and_targets(), cuts=st.lists(st.integers(0, 5), max_size=3))
def test_metric_is_correct_or_raises_a_clear_error(case, cuts):
    logits, target, top_k = case
    result = outcome(lambda: transform_consistency(logits, target, top_k=top_k), METRIC_ARGS)
    metric = TransformConsistency(top_k=top_k)
    if result is None:
        with pytest.raises(CLEAR_ERRORS):  # the metric rejects what the function rejects
            metric.update(logits, target)
            metric.compute()
        return
    check_metric_values(result, top_k)
    for key, value in independent_metrics(logits, target).items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key
    assert result["per_frame_flip_rate"].shape == (logits.shape[1] - 1,)
    # the metric over arbitrary (possibly empty) consecutive batches equals the function on all images
    bounds = sorted({0, logits.shape[0], *(min(c, logits.shape[0]) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:]):
        metric.update(logits[start:stop], None if target is None else target[start:stop])
    merged = metric.compute()
    assert merged.keys() == result.keys()
    for key in result:
        assert merged[key].shape == result[key].shape, key
        torch.testing.assert_close(merged[key], result[key], atol=1e-6, rtol=0, msg=key)


# -- evaluate_invariance --------------------------------------------------------------------------
class QuadrantModel(nn.Module):
    """Four logits: the mean intensity of each image quadrant (shift-sensitive, any size, no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), 2).flatten(1)


@FUZZ
@given(
    sequence=sequences(),
    images=image_batches(max_side=10),
    with_targets=st.booleans(),
    batch_size=rarely(st.sampled_from([-1, 0, True, 2.0]), st.sampled_from([1, 2, 3, 5, 8, 13, 100]), 10),
    top_k=rarely(st.just(5), st.sampled_from([None, 1, 3, 4]), 10),
    loader_batch=st.integers(1, 3),
)
def test_evaluate_invariance_is_correct_or_raises_a_clear_error(sequence, images, with_targets, batch_size, top_k, loader_batch):
    note(repr(sequence))
    model = QuadrantModel()
    targets = torch.arange(images.shape[0]) % 4 if with_targets else None
    run = lambda data, labels: evaluate_invariance(model, data, labels, sequence, batch_size=batch_size, top_k=top_k)  # noqa: E731
    result = outcome(lambda: run(images, targets), EVALUATE_ARGS)
    if result is None:
        return
    floats = images.float() / 255 if images.dtype == torch.uint8 else images
    direct = torch.stack([model(sequence.frame(floats, t)) for t in range(len(sequence))], dim=1)
    expected = transform_consistency(direct, targets, top_k=top_k)
    check_metric_values(result, top_k)
    assert result.keys() == expected.keys()
    for key in result:
        torch.testing.assert_close(result[key], expected[key], atol=1e-5, rtol=0, msg=key)
    # a loader of (images, targets) batches gives the same numbers as one tensor
    batches = [(images[i : i + loader_batch], None if targets is None else targets[i : i + loader_batch])
               for i in range(0, images.shape[0], loader_batch)]
    from_batches = run(batches, None)
    for key in result:
        torch.testing.assert_close(from_batches[key], result[key], atol=1e-6, rtol=0, msg=key)
