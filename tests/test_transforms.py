"""Transform sequences against independent constructions (torch.roll, hand-built padded slices)."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from invariance_lightning import ScaleSequence, ShiftSequence


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 2, 9, 11)


def hand_zero_shift(x: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    """Shift by explicit index arithmetic: out[r, c] = x[r - dy, c - dx] where that exists, else fill."""
    height, width = x.shape[-2:]
    out = torch.full_like(x, fill)
    for r in range(height):
        for c in range(width):
            if 0 <= r - dy < height and 0 <= c - dx < width:
                out[..., r, c] = x[..., r - dy, c - dx]
    return out


def hand_reflect_shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Mirror index about the border pixels: -1 -> 1, W -> W - 2."""
    height, width = x.shape[-2:]

    def mirror(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = torch.empty_like(x)
    for r in range(height):
        for c in range(width):
            out[..., r, c] = x[..., mirror(r - dy, height), mirror(c - dx, width)]
    return out


def test_direction_sequences_list_expected_shifts():
    assert ShiftSequence(max_shift=3).shifts == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert ShiftSequence(max_shift=4, direction="horizontal", step=2).shifts == [(0, 0), (2, 0), (4, 0)]
    assert ShiftSequence(max_shift=1, direction="vertical", step=0.5).shifts == [(0, 0), (0, 0.5), (0, 1)]
    grid = ShiftSequence(max_shift=2, grid=True).shifts
    assert sorted(grid) == [(dx, dy) for dx in range(3) for dy in range(3)]
    assert grid[0] == (0, 0)
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in itertools.pairwise(grid)]
    assert steps == [1] * (len(grid) - 1), "grid frames must be one step apart (snake order)"


@pytest.mark.parametrize("dx,dy", [(1, 1), (-3, 2), (4, -5), (0, 8), (10, 0)])
def test_circular_equals_torch_roll(images, dx, dy):
    frames = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="circular")(images)
    torch.testing.assert_close(frames[:, 0], images, rtol=0, atol=0)
    torch.testing.assert_close(frames[:, 1], torch.roll(images, shifts=(dy, dx), dims=(-2, -1)), rtol=0, atol=0)


@pytest.mark.parametrize("dx,dy", [(1, 1), (-3, 2), (4, -5), (0, 8)])
@pytest.mark.parametrize("fill", [0.0, -1.5])
def test_zeros_mode_equals_hand_built_slices(images, dx, dy, fill):
    frame = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="zeros", fill=fill).frame(images, 1)
    torch.testing.assert_close(frame, hand_zero_shift(images, dx, dy, fill), rtol=0, atol=0)


@pytest.mark.parametrize("dx,dy", [(1, 1), (-3, 2), (4, -5), (0, 8)])
def test_reflect_mode_equals_hand_mirroring(images, dx, dy):
    frame = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="reflect").frame(images, 1)
    torch.testing.assert_close(frame, hand_reflect_shift(images, dx, dy), rtol=0, atol=0)


@pytest.mark.parametrize("dx,dy", [(1, 1), (-3, 2), (4, -5), (0, 8)])
def test_mask_mode_blanks_what_a_zero_filled_shift_loses_and_rolls_into_it(images, dx, dy):
    fill = -1.5
    frame = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="mask", fill=fill).frame(images, 1)
    height, width = images.shape[-2:]
    expected = images.clone()  # in place, with the rows and columns a (dx, dy) shift pushes out set to fill
    rows = slice(height - dy, height) if dy > 0 else slice(0, -dy)
    columns = slice(width - dx, width) if dx > 0 else slice(0, -dx)
    expected[..., rows, :] = fill
    expected[..., :, columns] = fill
    torch.testing.assert_close(frame, expected, rtol=0, atol=0)
    rolled = torch.roll(frame, shifts=(dy, dx), dims=(-2, -1))
    torch.testing.assert_close(rolled, hand_zero_shift(images, dx, dy, fill), rtol=0, atol=0)


def test_crop_mode_moves_a_window_without_inventing_border(images):
    seq = ShiftSequence(max_shift=2, mode="crop")  # default window: 9-4 x 11-4, centred
    frames = seq(images)
    assert frames.shape == (3, 3, 2, 5, 7)
    for t, (dx, dy) in enumerate(seq.shifts):
        torch.testing.assert_close(frames[:, t], images[..., 2 - dy : 7 - dy, 2 - dx : 9 - dx], rtol=0, atol=0)
    fixed = ShiftSequence(max_shift=1, direction="horizontal", mode="crop", crop_size=(9, 8))
    assert fixed.frame(images, 1).shape[-2:] == (9, 8)
    torch.testing.assert_close(fixed.frame(images, 1), images[..., :, 0:8], rtol=0, atol=0)


def test_fractional_circular_shift_composes_exactly():
    x = torch.rand(2, 3, 15, 13, dtype=torch.float64)  # odd sizes: no Nyquist component
    half = ShiftSequence(shifts=[(0, 0), (0.5, 0.5)], mode="circular")
    twice = half.frame(half.frame(x, 1), 1)
    torch.testing.assert_close(twice, torch.roll(x, shifts=(1, 1), dims=(-2, -1)), rtol=0, atol=1e-10)
    # a band-limited signal on an even grid: the FFT shift is exact there too
    n = torch.arange(16, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * 3 * n / 16)[None, None, None, :].expand(1, 1, 4, 16)
    shifted = ShiftSequence(shifts=[(0, 0), (0.25, 0)], mode="circular").frame(wave, 1)
    expected = torch.cos(2 * torch.pi * 3 * (n - 0.25) / 16)
    torch.testing.assert_close(shifted[0, 0, 0], expected, rtol=0, atol=1e-10)


def test_fractional_circular_shift_scales_the_nyquist_terms_of_even_sizes():
    # the real part of the interpolant: a Nyquist-row wave moves by dx, scaled by cos(pi dy); the corner by cos(pi (dx + dy))
    dx, dy = 0.3, 0.7
    y, x = torch.arange(8, dtype=torch.float64)[:, None], torch.arange(8, dtype=torch.float64)[None, :]
    frame = ShiftSequence(shifts=[(0, 0), (dx, dy)], mode="circular").frame
    row_wave = torch.cos(torch.pi * y) * torch.cos(torch.pi * x / 2)
    expected = math.cos(math.pi * dy) * torch.cos(torch.pi * y) * torch.cos(torch.pi * (x - dx) / 2)
    torch.testing.assert_close(frame(row_wave[None, None], 1)[0, 0], expected, rtol=0, atol=1e-10)
    corner = torch.cos(torch.pi * y) * torch.cos(torch.pi * x)
    expected = math.cos(math.pi * (dx + dy)) * corner  # not cos(pi dx) * cos(pi dy)
    torch.testing.assert_close(frame(corner[None, None], 1)[0, 0], expected, rtol=0, atol=1e-10)


def test_fractional_circular_shift_of_an_empty_batch():
    # found by fuzzing: MKL's FFT raised "Inconsistent configuration parameters" for N = 0
    frame = ShiftSequence(shifts=[(0, 0), (0, 0.25)], mode="circular").frame(torch.rand(0, 1, 4, 4), 1)
    assert frame.shape == (0, 1, 4, 4)


def test_fractional_zero_shift_is_bilinear():
    x = torch.rand(1, 1, 6, 6)
    frame = ShiftSequence(shifts=[(0, 0), (0.5, 0)], mode="zeros", fill=2.0).frame(x, 1)
    interior = 0.5 * (x[..., :, :-1] + x[..., :, 1:])
    torch.testing.assert_close(frame[..., :, 1:], interior, rtol=0, atol=1e-6)
    torch.testing.assert_close(frame[..., :, 0], 0.5 * (x[..., :, 0] + 2.0), rtol=0, atol=1e-6)


def test_embed_keeps_whole_object_visible_under_shifts():
    x = torch.rand(2, 3, 32, 32) + 0.1  # strictly positive content, fill 0
    seq = ShiftSequence(max_shift=4, mode="zeros", embed=0.75)  # 24 px object, 4 px margin
    frames = seq(x)
    mass = frames.sum(dim=(-1, -2, -3))
    torch.testing.assert_close(mass, mass[:, :1].expand_as(mass))
    assert float(frames[:, 0, :, :4, :].abs().max()) == 0.0  # top margin is fill
    with pytest.raises(ValueError, match="embed margin"):
        ShiftSequence(max_shift=5, embed=0.75).frame(x, 0)


def test_scale_sequence_keeps_size_and_matches_interpolate(images):
    seq = ScaleSequence([1.0, 0.5, 2.0], mode="zeros", fill=-1.0)
    x = torch.rand(1, 1, 8, 8)
    frames = seq(x)
    assert frames.shape == (1, 3, 1, 8, 8)
    torch.testing.assert_close(frames[:, 0], x)
    small = F.interpolate(x, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(frames[:, 1, :, 2:6, 2:6], small)
    assert torch.all(frames[:, 1, :, :2] == -1.0)
    large = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(frames[:, 2], large[..., 4:12, 4:12])
    crop = ScaleSequence([1.0, 0.75, 1.25], mode="crop")
    assert crop(images).shape[-2:] == (7, 8)  # round(9 * .75), round(11 * .75)


def test_sequences_are_picklable_printable_and_comparable():
    seqs = [ShiftSequence(max_shift=2, mode="circular"), ScaleSequence([1.0, 1.1], mode="crop", crop_size=8)]
    for seq in seqs:
        assert pickle.loads(pickle.dumps(seq)) == seq
        assert type(seq).__name__ in repr(seq)
    assert repr(ShiftSequence(max_shift=1)) == "ShiftSequence(shifts=[(0, 0), (1, 1)], mode='zeros')"
    assert ShiftSequence(max_shift=3).frame_values == [0.0, 1.0, 2.0, 3.0]
    assert ScaleSequence([1.0, 0.9]).frame_labels == ["x1", "x0.9"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_shift": 2, "mode": "wrap"}, "mode must be one of"),
        ({"max_shift": 2, "direction": "up"}, "direction must be one of"),
        ({"max_shift": 3, "step": 2}, "whole multiple of step"),
        ({"max_shift": 0}, r"ShiftSequence: max_shift must be a finite number > 0, got 0"),
        ({"max_shift": float("nan")}, "max_shift must be a finite number"),
        ({"shifts": [(0, 0)]}, "at least 2 frames"),
        ({"shifts": [(0, 0), (1,)]}, r"\(dx, dy\) pairs"),
        ({"max_shift": 1, "shifts": [(0, 0), (1, 1)]}, "either max_shift"),
        ({"max_shift": 1, "crop_size": 4}, "only used with mode='crop'"),
        ({"max_shift": 1, "embed": 1.5}, "embed must be"),
        (
            {"shifts": [(0, 0), (0.5, 1)], "mode": "mask"},
            r"mode 'mask' takes integer shifts only \(from shifts, or max_shift and step\), got \[\(0, 0\), \(0.5, 1\)\]",
        ),
    ],
)
def test_shift_sequence_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShiftSequence(**kwargs)


@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(
    "build",
    [
        lambda fill: ShiftSequence(max_shift=1, fill=fill),
        lambda fill: ShiftSequence(shifts=[(0, 0), (0.5, 0)], mode="zeros", fill=fill),
        lambda fill: ShiftSequence(max_shift=1, mode="circular", embed=0.5, fill=fill),
        lambda fill: ScaleSequence([1.0, 0.5], fill=fill),
        lambda fill: ScaleSequence([1.0, 1.5], mode="crop", embed=0.5, fill=fill),
    ],
    ids=["shift", "subpixel-shift", "shift-embed", "scale", "scale-embed"],
)
def test_non_finite_fill_is_rejected(build, fill):
    # Accepted, such a fill turned frames into NaN (bilinear shifts compute images - fill) or inf borders.
    with pytest.raises(ValueError, match="fill must be a finite number"):
        build(fill)


@pytest.mark.parametrize("kwargs", [{"max_shift": 2, "grid": True}, {"shifts": [(0, 0), (1, 1)]}])
def test_a_bad_direction_is_rejected_even_where_it_is_unused(kwargs):
    with pytest.raises(ValueError, match="direction must be one of"):
        ShiftSequence(direction="diagnol", **kwargs)


def test_shifts_that_do_not_fit_the_image_are_rejected_with_sizes():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"do not fit 8x8 images"):
        ShiftSequence(shifts=[(0, 0), (8, 0)], mode="zeros").frame(x, 0)
    with pytest.raises(ValueError, match=r"6x6 crop window .* does not fit 8x8"):
        ShiftSequence(max_shift=2, mode="crop", crop_size=6).frame(x, 0)
    with pytest.raises(
        ValueError, match=r"^ShiftSequence: images must be a floating-point \(N, C, H, W\) tensor, got shape \(8, 8\)"
    ):
        ShiftSequence(max_shift=1).frame(torch.rand(8, 8), 0)
    with pytest.raises(TypeError, match="floating-point .* dtype torch.uint8$"):
        ShiftSequence(max_shift=1).frame(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 0)
    with pytest.raises(IndexError):
        ShiftSequence(max_shift=1).frame(x, 2)


def test_scale_sequence_rejects_bad_arguments():
    with pytest.raises(
        ValueError, match=r"ScaleSequence: each factor in factors .* must be a finite number > 0, got 0.0"
    ):
        ScaleSequence([1.0, 0.0])
    with pytest.raises(TypeError, match=r"ScaleSequence: each factor in factors .* got str '2'"):
        ScaleSequence([1.0, "2"])
    with pytest.raises(ValueError, match="at least 2 factors"):
        ScaleSequence([1.0])
    with pytest.raises(ValueError, match="reflection needs padding smaller"):
        ScaleSequence([1.0, 0.4], mode="reflect").frame(torch.rand(1, 1, 10, 10), 1)
    with pytest.raises(ValueError, match="does not fit the smallest rescaled image"):
        ScaleSequence([1.0, 0.5], mode="crop", crop_size=6).frame(torch.rand(1, 1, 10, 10), 0)
    with pytest.raises(ValueError, match="enlarges the object"):
        ScaleSequence([1.0, 1.5], embed=0.8).frame(torch.rand(1, 1, 10, 10), 0)


@pytest.mark.parametrize(("left", "right", "top", "bottom"), [(1, 2, 0, 1), (4, 5, 3, 2), (7, 0, 0, 6)])
def test_circular_pad_2d_tiles_the_map_even_beyond_its_size(left, right, top, bottom):
    # The one padding helper (transforms and BlurPool2d): circular padding equals a crop of the tiled map, also
    # where the padding wraps more than once (F.pad refuses that).
    from invariance_lightning.transforms.functional import pad_2d

    x = torch.rand(2, 1, 2, 3)
    tiled = x.repeat(1, 1, 9, 9)  # origin copy at rows 8.., columns 12..
    expected = tiled[..., 8 - top : 8 + 2 + bottom, 12 - left : 12 + 3 + right]
    torch.testing.assert_close(pad_2d(x, left, right, top, bottom, "circular"), expected, rtol=0, atol=0)


def test_pad_2d_zeros_fill_and_reflect_on_tiny_maps():
    from invariance_lightning.transforms.functional import pad_2d

    x = torch.rand(1, 1, 2, 2)
    padded = pad_2d(x, 1, 2, 0, 1, "zeros", fill=0.5)
    expected = torch.full((1, 1, 3, 5), 0.5)
    expected[..., 0:2, 1:3] = x
    torch.testing.assert_close(padded, expected, rtol=0, atol=0)
    # reflect padding of 2 needs 3 pixels: a 2x2 map is replicate-padded instead
    torch.testing.assert_close(pad_2d(x, 2, 2, 2, 2, "reflect"), F.pad(x, (2, 2, 2, 2), mode="replicate"))
