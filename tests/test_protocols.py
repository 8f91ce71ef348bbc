"""Published shift-invariance protocols against hand-worked cases and literal re-implementations of the papers' code."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.metrics import PROTOCOLS, evaluate_invariance, evaluate_protocol, protocol_counts
from invariance_lightning.metrics.protocols import image_generator
from invariance_lightning.models import cifar_resnet


class BrightestPixel(nn.Module):
    """Class ``r * W + c`` of the brightest pixel (channel sum); an all-black image is class 0."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=1).flatten(1)


class ColumnBlock(nn.Module):
    """Class ``c // block`` of the column holding the brightest pixel; an all-black image is class 0."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        columns = x.sum(dim=1).amax(dim=1)  # (N, W)
        return columns.unflatten(1, (-1, self.block)).amax(dim=-1)


class Spy(nn.Module):
    """Records every input batch; logits are the channel means (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return x.mean(dim=(2, 3))

    def frames(self) -> Tensor:
        return torch.cat(self.inputs)


class Centered(nn.Module):
    """``net`` minus its mean logits on ``images``: a fixed offset that puts the random-init classes near a tie."""

    def __init__(self, net: nn.Module, images: Tensor) -> None:
        super().__init__()
        self.net = net.eval()
        with torch.no_grad():
            self.register_buffer("offset", net(images).mean(dim=0))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) - self.offset


def pointwise_gap_net(relu: bool) -> nn.Module:
    """1x1 conv (+ ReLU) -> global average pool -> linear: the output depends only on the multiset of pixels."""
    layers = [nn.Conv2d(3, 8, 1), nn.ReLU()] if relu else [nn.Conv2d(3, 8, 1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def one_bright_pixel(rows: list[int], cols: list[int], size: int) -> Tensor:
    images = torch.zeros(len(rows), 3, size, size)
    for i, (r, c) in enumerate(zip(rows, cols)):
        images[i, :, r, c] = 1.0
    return images


def band_limited_matrix(n: int, shift: float) -> Tensor:
    """``y = M @ x`` moves a periodic length-``n`` signal's content by ``shift`` with ideal (sinc) interpolation.

    The trigonometric interpolant with the Nyquist term split evenly between +-n/2 (what the AFC code gets by
    upsampling with an ideal low-pass whose Nyquist bins weigh 1/2, rolling and subsampling), evaluated at
    ``m - shift``: a Dirichlet kernel, written out in real space as an independent check of the FFT path.
    """
    m = torch.arange(n, dtype=torch.float64)
    d = m[:, None] - shift - m[None, :]
    k = torch.arange(-((n - 1) // 2), (n - 1) // 2 + 1, dtype=torch.float64)
    kernel = torch.cos(2 * math.pi * k[:, None, None] * d / n).sum(dim=0)
    if n % 2 == 0:
        kernel = kernel + torch.cos(math.pi * d)
    return kernel / n


def band_limited_shift(images: Tensor, dx: float, dy: float) -> Tensor:
    rows = band_limited_matrix(images.shape[-2], dy)
    cols = band_limited_matrix(images.shape[-1], dx)
    return torch.einsum("ij,ncjk,lk->ncil", rows, images.double(), cols).float()


# ---------------------------------------------------------------- definitions


def test_protocol_definitions_match_the_authors_code():
    assert list(PROTOCOLS) == [
        "zhang2019",
        "aps2021_standard",
        "aps2021_circular",
        "afc2023_adversarial",
        "imagenet_p_flip",
    ]
    zhang, standard, circular = PROTOCOLS["zhang2019"], PROTOCOLS["aps2021_standard"], PROTOCOLS["aps2021_circular"]
    # np.random.randint(-3, 3) window offsets s (high exclusive): content moves by -s when cropping the 3-px
    # zero-padded image, by +s under torch.roll; Zhang's randint(2 * pad) window offsets give the same [-2, 3].
    assert (standard.shift_range, standard.boundary, standard.passes) == ((-2, 3), "zeros", 1)
    assert (circular.shift_range, circular.boundary, circular.passes) == ((-3, 2), "circular", 1)
    assert (zhang.shift_range, zhang.boundary, zhang.passes, zhang.crop) == ((-2, 3), "zeros", 5, None)
    afc = PROTOCOLS["afc2023_adversarial"]
    assert (afc.period, afc.crop_margin) == (32, 3)
    assert [len(s) for s in afc.sequences.values()] == [1 + 31 * 31, 1 + 31 * 31, 6 * 6]
    assert PROTOCOLS["imagenet_p_flip"].shifts == tuple((dx, 0) for dx in range(-7, 9))
    assert [p.frames_per_image for p in PROTOCOLS.values()] == [10, 2, 2, 962 + 962 + 36, 16]
    for protocol in PROTOCOLS.values():
        assert protocol.citation and protocol.source and protocol.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        zhang.passes = 1  # type: ignore[misc]


def test_drawn_shifts_cover_exactly_the_stated_range():
    for name in ("aps2021_standard", "aps2021_circular"):
        protocol = PROTOCOLS[name]
        shifts = protocol.draw_shifts(torch.arange(2000), seed=3)
        assert shifts.shape == (2000, 2, 2)
        low, high = protocol.shift_range
        assert sorted(shifts.unique().tolist()) == list(range(low, high + 1))
        # dx and dy are drawn independently of each other and of the partner frame
        assert (shifts[:, 0, 0] == shifts[:, 0, 1]).float().mean() == pytest.approx(1 / 6, abs=0.03)


# ---------------------------------------------------------------- random pairs: literal re-implementations


def test_aps_circular_frames_are_torch_roll_of_the_drawn_shifts():
    images = torch.rand(5, 3, 12, 17)  # not square: rows and columns must not be mixed up
    spy = Spy()
    evaluate_protocol(spy, images, None, "aps2021_circular", seed=7, batch_size=4)
    frames = spy.frames().unflatten(0, (5, 2))
    shifts = PROTOCOLS["aps2021_circular"].draw_shifts(torch.arange(5), seed=7)
    for i in range(5):
        for t in range(2):
            dx, dy = shifts[i, t].tolist()
            assert torch.equal(frames[i, t], torch.roll(images[i], shifts=(dy, dx), dims=(1, 2)))


def test_aps_standard_frames_are_crops_of_the_zero_padded_image():
    images = torch.rand(4, 3, 10, 10)
    spy = Spy()
    evaluate_protocol(spy, images, None, "aps2021_standard", seed=1)
    frames = spy.frames().unflatten(0, (4, 2))
    shifts = PROTOCOLS["aps2021_standard"].draw_shifts(torch.arange(4), seed=1)
    padded = F.pad(images, (3, 3, 3, 3))
    for i in range(4):
        for t in range(2):
            # the APS code crops padded[s0 + 3 : s0 - 3, s1 + 3 : s1 - 3] with window offsets s = -shift
            s1, s0 = (-shifts[i, t]).tolist()
            assert torch.equal(frames[i, t], padded[i, :, s0 + 3 : s0 + 13, s1 + 3 : s1 + 13])


def test_zhang_imagenet_variant_frames_are_crops_at_offsets_below_size_minus_crop():
    # Zhang's ImageNet code: 224 crops of a 256 image at offsets randint(32) = 0..31; here 8 of 16 at 0..7.
    variant = dataclasses.replace(PROTOCOLS["zhang2019"], shift_range=(-3, 4), crop=8, passes=2)
    images = torch.rand(3, 3, 16, 16)
    spy = Spy()
    evaluate_protocol(spy, images, None, variant)
    frames = spy.frames().unflatten(0, (3, 4))
    offsets = 4 - variant.draw_shifts(torch.arange(3), seed=0)  # window offset of the centred window at 4
    assert offsets.min() >= 0 and offsets.max() <= 7
    for i in range(3):
        for t in range(4):
            ox, oy = offsets[i, t].tolist()
            assert torch.equal(frames[i, t], images[i, :, oy : oy + 8, ox : ox + 8])


def test_pair_consistency_equals_hand_count_on_a_position_classifier():
    # The class is the bright pixel's position, which stays inside the 16x16 frame for shifts up to 3 px: two
    # shifted copies agree exactly when their two shifts are equal.
    images = one_bright_pixel([8] * 60, [8] * 60, 16)
    for name in ("zhang2019", "aps2021_standard", "aps2021_circular"):
        protocol = PROTOCOLS[name]
        out = evaluate_protocol(BrightestPixel(), images, None, name, seed=5)
        shifts = protocol.draw_shifts(torch.arange(60), seed=5).unflatten(1, (protocol.passes, 2))
        expected = (shifts[:, :, 0] == shifts[:, :, 1]).all(dim=-1).double().mean().item()
        assert out == {"num_images": 60.0, "consistency": pytest.approx(expected)}
        assert 0 < expected < 0.2  # 1/36 in expectation


def test_pair_accuracy_counts_both_frames_of_every_pass():
    images = one_bright_pixel([8, 8], [8, 8], 16)
    targets = torch.tensor([8 * 16 + 8, 0])
    out = evaluate_protocol(BrightestPixel(), images, targets, "zhang2019", seed=2)
    shifts = PROTOCOLS["zhang2019"].draw_shifts(torch.arange(2), seed=2)
    unshifted = (shifts[0] == 0).all(dim=-1).sum().item()  # image 0 is correct only on unshifted frames
    assert out["accuracy"] == pytest.approx(unshifted / 20)


# ---------------------------------------------------------------- invariant and non-invariant networks


def test_aps_network_with_circular_padding_is_exactly_consistent_and_strided_is_not():
    torch.manual_seed(0)
    images = torch.rand(32, 3, 32, 32)
    aps = cifar_resnet(20, downsample="aps", padding_mode="circular")
    strided = cifar_resnet(20, downsample="stride", padding_mode="circular")
    strided.load_state_dict(aps.state_dict())
    aps_model, strided_model = Centered(aps, images), Centered(strided, images)
    assert evaluate_protocol(aps_model, images, None, "aps2021_circular")["consistency"] == 1.0
    assert evaluate_protocol(strided_model, images, None, "aps2021_circular")["consistency"] < 0.9
    # zero padding moves content out of the frame: APS is not exactly invariant to it
    assert evaluate_protocol(aps_model, images, None, "aps2021_standard")["consistency"] < 1.0


def test_pointwise_networks_are_invariant_to_the_circular_grids():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    linear = pointwise_gap_net(relu=False)
    targets = linear(images).argmax(dim=1)
    out = evaluate_protocol(linear, images, targets, "afc2023_adversarial", batch_size=512)
    # the pixel mean is the DC coefficient, which integer rolls and FFT shifts both keep
    assert out["accuracy"] == out["adversarial_integer"] == out["adversarial_half_pixel"] == 1.0
    relu = pointwise_gap_net(relu=True)
    assert evaluate_protocol(relu, images, None, "aps2021_circular")["consistency"] == 1.0


# ---------------------------------------------------------------- AFC grids


def test_afc_grids_reproduce_roll_crop_and_ideal_half_pixel_shift_frame_by_frame():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    spy = Spy()
    evaluate_protocol(spy, image, torch.tensor([0]), "afc2023_adversarial", batch_size=400)
    frames = spy.frames()
    assert frames.shape[0] == 962 + 962 + 36
    integer, half, crop = frames[:962], frames[962:1924], frames[1924:]
    # shift_eval.py: torch.roll(images, shifts=(x, y), dims=(2, 3)) for x, y in product(range(1, 32), range(1, 32))
    rolled = [torch.roll(image, shifts=(x, y), dims=(2, 3)) for x in range(1, 32) for y in range(1, 32)]
    assert torch.equal(integer, torch.cat([image, *rolled]))
    # half_shift: subpixel_shift(up=2, 2x - 1, 2y - 1) moves content by -(x - 1/2), -(y - 1/2)
    halves = [band_limited_shift(image, -(y - 0.5), -(x - 0.5)) for x in range(1, 32) for y in range(1, 32)]
    assert torch.equal(half[0], image[0])
    torch.testing.assert_close(half[1:], torch.cat(halves), atol=2e-5, rtol=0)
    # crop shift: windows at rows/cols 1 .. 2m of the image padded by m (zeros: there is no larger image)
    padded = F.pad(image, (3, 3, 3, 3))
    windows = [padded[:, :, x : x + 32, y : y + 32] for x in range(1, 7) for y in range(1, 7) if (x, y) != (3, 3)]
    assert torch.equal(crop, torch.cat([image, *windows]))


def test_half_pixel_shift_is_band_limited_and_twice_is_one_pixel_roll():
    half = PROTOCOLS["afc2023_adversarial"].sequences["half_pixel"]
    t = half.shifts.index((-0.5, -0.5))
    torch.manual_seed(0)
    odd = torch.rand(2, 3, 33, 33)  # odd sizes have no Nyquist frequency
    twice = half.frame(half.frame(odd, t), t)
    torch.testing.assert_close(twice, torch.roll(odd, shifts=(-1, -1), dims=(2, 3)), atol=1e-5, rtol=0)
    # a band-limited image: no energy is created outside its spectrum, and the magnitudes are kept
    low = torch.fft.fftfreq(32).abs() <= 0.25
    image = torch.fft.ifft2(torch.fft.fft2(torch.rand(2, 3, 32, 32)) * (low[:, None] & low[None, :])).real
    spectrum = torch.fft.fft2(image)
    for t in (1, 500, len(half) - 1):
        shifted = torch.fft.fft2(half.frame(image, t))
        torch.testing.assert_close(shifted.abs(), spectrum.abs(), atol=1e-3, rtol=0)
    for sequence in PROTOCOLS["afc2023_adversarial"].sequences.values():
        assert torch.equal(sequence.frame(image, 0), image)  # shift 0 is the identity


def test_afc_grids_count_an_image_only_if_every_frame_is_correct():
    # class = bright pixel's column // 8; crop shifts move it by dx in [-3, 2] px (off the frame: black, class 0)
    cols = [4, 6, 7, 12, 30]
    images = one_bright_pixel([16] * 5, cols, 32)
    targets = torch.tensor([c // 8 for c in cols])
    # batch_size 10 splits each grid into passes of 2 or 3 frames, whose verdicts must all be combined
    out = evaluate_protocol(ColumnBlock(8), images, targets, "afc2023_adversarial", batch_size=10)
    # 4: 1..6 all in block 0; 6: 8 is in block 1; 7: 8, 9 are; 12: 9..14 in block 1; 30: 32 is off the frame
    assert out["accuracy"] == 1.0
    assert out["adversarial_crop"] == 2 / 5
    assert out["adversarial_integer"] == 0.0  # circular shifts by 1..31 leave the block


# ---------------------------------------------------------------- ImageNet-P flip probability


def test_flip_probability_equals_hand_count():
    # the pixel at column 8 of 16 moves through columns 1 .. 15 and then off the frame (black: class 0):
    # classes 0 0 0 1 1 1 1 2 2 2 2 3 3 3 3 0, i.e. 4 changes in 15 transitions
    images = one_bright_pixel([5], [8], 16)
    out = evaluate_protocol(ColumnBlock(4), images, torch.tensor([2]), "imagenet_p_flip")
    assert out["flip_probability"] == pytest.approx(4 / 15)
    assert out["accuracy"] == pytest.approx(4 / 16)


def test_flip_probability_equals_flip_rate_of_evaluate_invariance_on_the_same_sequence():
    torch.manual_seed(0)
    images = torch.rand(10, 3, 16, 16)
    net = Centered(cifar_resnet(20), images)
    out = evaluate_protocol(net, images, None, "imagenet_p_flip")
    reference = evaluate_invariance(net, images, None, PROTOCOLS["imagenet_p_flip"].sequence, top_k=None)
    assert out["flip_probability"] == pytest.approx(reference["flip_rate"].item())
    assert out["flip_probability"] > 0


# ---------------------------------------------------------------- seeding, batching, sharding


def test_seeded_results_ignore_global_rng_batch_size_and_sharding():
    torch.manual_seed(0)
    images = (torch.rand(23, 3, 16, 16) * 255).to(torch.uint8)
    targets = torch.randint(0, 10, (23,))
    net = Centered(cifar_resnet(20), images.float() / 255)
    for name in ("zhang2019", "aps2021_standard", "imagenet_p_flip"):
        reference = protocol_counts(net, images, targets, name, seed=11, batch_size=256)
        torch.manual_seed(123)  # the global RNG does not matter
        assert protocol_counts(net, images, targets, name, seed=11, batch_size=7) == reference
        # two shards with their global indices sum to the whole (what an all_reduce under DDP computes)
        first = protocol_counts(net, images[:9], targets[:9], name, seed=11)
        second = protocol_counts(net, images[9:], targets[9:], name, seed=11, indices=torch.arange(9, 23))
        assert {k: first[k] + second[k] for k in reference} == reference
        assert PROTOCOLS[name].summarize(reference) == evaluate_protocol(net, images, targets, name, seed=11)
    zhang = PROTOCOLS["zhang2019"]
    assert not torch.equal(zhang.draw_shifts(torch.arange(23), 11), zhang.draw_shifts(torch.arange(23), 12))


def test_image_generator_depends_on_seed_and_index_only():
    def draw(seed: int, index: int) -> list[int]:
        return torch.randint(0, 1000, (4,), generator=image_generator(seed, index)).tolist()

    assert draw(0, 5) == draw(0, 5)
    assert len({tuple(draw(s, i)) for s in range(3) for i in range(50)}) == 150


def test_model_runs_in_eval_mode_without_grad_and_modes_are_restored():
    net = cifar_resnet(20).train()
    net.bn1.eval()  # a frozen BatchNorm inside a training model
    seen = []
    net.linear.register_forward_hook(lambda module, args, out: seen.append((module.training, out.requires_grad)))
    running_mean = net.layer1[0].bn1.running_mean.clone()
    evaluate_protocol(net, torch.rand(2, 3, 32, 32), None, "aps2021_circular")
    assert seen == [(False, False)]
    assert torch.equal(net.layer1[0].bn1.running_mean, running_mean)
    assert net.training and not net.bn1.training and net.layer1[0].bn1.training


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "zhang"}, ValueError, "valid protocols: zhang2019, aps2021_standard"),
        (
            {"images": torch.rand(0, 3, 32, 32)},
            ValueError,
            r"^aps2021_circular: images must hold at least one image, got shape \(0, 3, 32, 32\)$",
        ),
        ({"images": torch.rand(2, 32, 32)}, ValueError, r"\(N, C, H, W\)"),
        ({"images": torch.randn(2, 3, 32, 32)}, ValueError, r"\[0, 1\]"),
        ({"images": torch.ones(2, 3, 32, 32, dtype=torch.int32)}, TypeError, "uint8 or floating"),
        (
            {"images": torch.rand(2, 3, 16, 16), "name": "afc2023_adversarial"},
            ValueError,
            "^afc2023_adversarial: its integer grid must fit the 16x16 images, got ",
        ),
        ({"images": torch.rand(2, 3, 3, 3)}, ValueError, "does not fit 3x3"),
        ({"targets": None, "name": "afc2023_adversarial"}, ValueError, "targets"),
        (
            {"targets": torch.zeros(3, dtype=torch.long)},
            ValueError,
            r"^aps2021_circular: targets must be None or of shape \(N,\) = \(2,\), got shape \(3,\)",
        ),
        ({"targets": torch.tensor([0, 10])}, ValueError, "class indices"),
        ({"indices": torch.tensor([0, -1])}, ValueError, "indices"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"model": lambda x: torch.full((x.shape[0], 10), float("nan"))}, ValueError, "NaN"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(kwargs, error, match):
    arguments = {
        "model": pointwise_gap_net(relu=False),
        "images": torch.rand(2, 3, 32, 32),
        "targets": torch.tensor([0, 1]),
        "name": "aps2021_circular",
        **kwargs,
    }
    model = arguments.pop("model")
    if not isinstance(model, nn.Module):
        model = type("Lambda", (nn.Module,), {"forward": lambda self, x, f=model: f(x)})()
    with pytest.raises(error, match=match):
        evaluate_protocol(model, arguments.pop("images"), arguments.pop("targets"), arguments.pop("name"), **arguments)


def test_bad_definitions_are_rejected():
    base = PROTOCOLS["aps2021_circular"]
    with pytest.raises(
        ValueError, match=r"^aps2021_circular: shift_range must be a \(low, high\) pair .* got \(2, -3\)$"
    ):
        dataclasses.replace(base, shift_range=(2, -3))
    with pytest.raises(TypeError, match=r"^aps2021_circular: shift_range must be .* got \(-2.0, 3\)$"):
        dataclasses.replace(base, shift_range=(-2.0, 3))
    with pytest.raises(ValueError, match="boundary"):
        dataclasses.replace(base, boundary="reflect")
    with pytest.raises(ValueError, match="passes"):
        dataclasses.replace(base, passes=0)
    with pytest.raises(ValueError, match="crop_margin"):
        dataclasses.replace(PROTOCOLS["afc2023_adversarial"], crop_margin=0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        dataclasses.replace(PROTOCOLS["imagenet_p_flip"], shifts=((0, 0),))


def test_the_adversarial_grid_takes_period_and_its_old_name_max_shift_with_a_warning():
    afc = PROTOCOLS["afc2023_adversarial"]
    assert dataclasses.replace(afc, period=4).sequences["integer"].shifts[-1] == (3, 3)  # 1 .. period - 1
    with pytest.warns(DeprecationWarning, match="max_shift is deprecated, use period"):
        old = dataclasses.replace(afc, max_shift=4)
    assert old.period == 4 and old == dataclasses.replace(afc, period=4)
