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


def test_bad_arguments_are_named():
    model = strided_net()
    with pytest.raises(ValueError, match="shifts must be a non-empty sequence of \\(dx, dy\\) int pairs"):
        ShiftAveraging(model, [(0.5, 0)])
    with pytest.raises(ValueError, match="boundary"):
        ShiftAveraging(model, boundary="wrap")
    with pytest.raises(ValueError, match=r"shifts \[\(8, 0\)\] do not fit 8x8 inputs"):
        ShiftAveraging(model, [(0, 0), (8, 0)])(torch.rand(1, 3, 8, 8))
