"""ShiftAveraging: test-time averaging of a model's logits over shifted copies of its input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invariance_lightning import ShiftSequence, evaluate_invariance
from invariance_lightning.models.shift_averaging import STRIDE2_SHIFTS, ShiftAveraging


def strided_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).eval()


def test_the_average_equals_the_mean_of_the_shifted_logits_in_one_forward_pass():
    model = strided_net()
    images = torch.rand(6, 3, 8, 8)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    averaged = ShiftAveraging(model, STRIDE2_SHIFTS, boundary="zeros", fill=0.5)
    expected = torch.stack(
        [
            model(
                nn.functional.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), value=0.5)[
                    ..., max(-dy, 0) : max(-dy, 0) + 8, max(-dx, 0) : max(-dx, 0) + 8
                ]
            )
            for dx, dy in STRIDE2_SHIFTS
        ]
    ).mean(dim=0)
    calls.clear()
    torch.testing.assert_close(averaged(images), expected)
    assert calls == [6 * 4]  # k copies of the batch, one forward pass: the cost is k forwards per image


def test_averaging_over_every_circular_shift_is_exactly_invariant_to_circular_shifts():
    model = strided_net()
    images, targets = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    every = [(dx, dy) for dy in range(8) for dx in range(8)]
    walk = ShiftSequence(shifts=[(0, 0), (1, 0), (1, 1), (3, 2)], mode="circular")
    plain = evaluate_invariance(model, images, targets, walk)
    averaged = evaluate_invariance(ShiftAveraging(model, every, boundary="circular"), images, targets, walk)
    assert float(plain["flip_rate"]) > 0.1  # the strided network is far from invariant ...
    assert float(averaged["flip_rate"]) == 0.0 and float(averaged["consistency"]) == 1.0  # ... its group average is


def test_hflip_also_averages_the_mirror_images_and_a_dx_symmetric_set_makes_it_mirror_invariant():
    model = strided_net()
    images = torch.rand(6, 3, 8, 8)
    shifts = [(-1, 0), (0, 0), (1, 1)]
    shifted = [torch.roll(images, (dy, dx), dims=(-2, -1)) for dx, dy in shifts]
    by_hand = torch.stack([model(x) for x in shifted] + [model(x.flip(-1)) for x in shifted]).mean(dim=0)
    averaged = ShiftAveraging(model, shifts, boundary="circular", hflip=True)
    assert averaged.copies == 6
    torch.testing.assert_close(averaged(images), by_hand)
    # the 3 x 3 neighbourhood holds the mirror (-dx, dy) of each shift, so mirroring the input permutes the copies
    neighbourhood = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for boundary in ("reflect", "circular", "zeros"):
        mirrored = ShiftAveraging(model, neighbourhood, boundary=boundary, hflip=True)
        torch.testing.assert_close(mirrored(images.flip(-1)), mirrored(images))
        without = ShiftAveraging(model, neighbourhood, boundary=boundary)
        assert (without(images.flip(-1)) - without(images)).abs().max() > 1e-3  # the network alone is not


def test_bad_arguments_are_named():
    model = strided_net()
    with pytest.raises(ValueError, match="shifts must be a non-empty sequence of \\(dx, dy\\) int pairs"):
        ShiftAveraging(model, [(0.5, 0)])
    with pytest.raises(ValueError, match="boundary"):
        ShiftAveraging(model, boundary="wrap")
    with pytest.raises(ValueError, match=r"shifts \[\(8, 0\)\] do not fit 8x8 inputs"):
        ShiftAveraging(model, [(0, 0), (8, 0)])(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="hflip must be a bool"):
        ShiftAveraging(model, hflip=1)  # type: ignore[arg-type]
