"""evaluate_invariance and evaluate_sequences against direct computation, on exactly invariant and non-invariant
models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invariance_lightning import (
    ScaleSequence,
    ShiftSequence,
    evaluate_invariance,
    sequence_preset,
    transform_consistency,
)
from invariance_lightning.diagnostics import layer_equivariance
from invariance_lightning.metrics.evaluate import evaluate_sequences


def circular_invariant_net(num_classes: int = 10) -> nn.Module:
    """Stride-1 circular convolutions then global average pooling: exactly invariant to circular shifts."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def strided_net(num_classes: int = 10) -> nn.Module:
    """Strided convolutions without antialiasing: not shift invariant."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def test_exactly_invariant_model_has_zero_flip_rate_under_circular_shifts():
    torch.manual_seed(1)
    images = torch.randn(64, 3, 16, 16)
    targets = torch.randint(0, 10, (64,))
    sequence = ShiftSequence(max_shift=8, mode="circular")
    out = evaluate_invariance(circular_invariant_net(), images, targets, sequence, batch_size=40)
    assert out["flip_rate"].item() == 0.0
    assert out["consistency"].item() == 1.0
    assert out["mac"].item() < 1e-6
    assert out["worst_case_accuracy"].item() == pytest.approx(out["accuracy"].item())


def test_strided_model_flips_under_one_pixel_shifts():
    torch.manual_seed(1)
    images = torch.randn(64, 3, 16, 16)  # zero-mean inputs, so that predictions differ between images
    out = evaluate_invariance(strided_net(), images, None, ShiftSequence(max_shift=8, mode="circular"))
    assert out["flip_rate"].item() > 0.05
    assert out["consistency"].item() < 1.0
    assert "accuracy" not in out


def test_results_equal_direct_computation_with_roll_and_normalization():
    torch.manual_seed(2)
    model = strided_net()
    images = torch.rand(7, 3, 12, 12)
    targets = torch.randint(0, 10, (7,))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    sequence = ShiftSequence(max_shift=4, mode="circular")
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    with torch.no_grad():
        direct = torch.stack([model((torch.roll(images, (k, k), dims=(-2, -1)) - m) / s) for k in range(5)], dim=1)
    expected = transform_consistency(direct, targets)
    # batch_size 3 < T = 5: one image per chunk, frames split over two forwards
    for batch_size in (3, 5, 256):
        out = evaluate_invariance(model, images, targets, sequence, batch_size=batch_size, normalize=(mean, std))
        for key in expected:
            torch.testing.assert_close(out[key], expected[key], rtol=1e-5, atol=1e-6)


class CountingLoader:
    """An iterable of ``(images, targets)`` batches that counts how often it is iterated and how many batches it
    gives (a DataLoader over a split on disk would read it that often)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> None:
        self.batches = list(zip(images.split(batch_size), targets.split(batch_size)))
        self.passes = self.batches_read = 0

    def __iter__(self):
        self.passes += 1
        for batch in self.batches:
            self.batches_read += 1
            yield batch


def test_evaluate_sequences_reads_a_stream_once_and_equals_direct_computation_per_sequence():
    torch.manual_seed(5)
    model = strided_net()
    images = torch.rand(9, 3, 12, 12)
    targets = torch.randint(0, 10, (9,))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    sequences = {"shift": ShiftSequence(max_shift=4, mode="circular"), "zoom": ScaleSequence([1.0, 0.5, 2.0])}
    with torch.no_grad():
        rolled = torch.stack([model((torch.roll(images, (k, k), dims=(-2, -1)) - m) / s) for k in range(5)], dim=1)
        # the scale frames come from the sequence itself: normalization, chunking and the one pass are checked here
        zoomed = torch.stack([model((sequences["zoom"].frame(images, t) - m) / s) for t in range(3)], dim=1)
    expected = {"shift": transform_consistency(rolled, targets), "zoom": transform_consistency(zoomed, targets)}

    loader = CountingLoader(images, targets, batch_size=4)  # batches of 4, 4, 1 images
    # batch_size 6: shift chunks of 1 image (5 frames), zoom chunks of 2 images (3 frames)
    out = evaluate_sequences(model, loader, None, sequences, batch_size=6, normalize=(mean, std))
    assert (loader.passes, loader.batches_read) == (1, 3), "each batch must go through every sequence in one pass"
    assert list(out) == ["shift", "zoom"]
    for name in sequences:
        for key in expected[name]:
            torch.testing.assert_close(out[name][key], expected[name][key], rtol=1e-5, atol=1e-6)


def test_evaluate_sequences_rejects_bad_sequences():
    model, images = strided_net(), torch.rand(2, 3, 8, 8)
    with pytest.raises(
        ValueError, match="^evaluate_sequences: sequences must be a non-empty mapping .* got an empty mapping$"
    ):
        evaluate_sequences(model, images, None, {})
    with pytest.raises(TypeError, match="^evaluate_sequences: sequences must be a non-empty mapping .* got list$"):
        evaluate_sequences(model, images, None, [ShiftSequence(max_shift=1)])
    with pytest.raises(TypeError, match=r"^evaluate_sequences: sequences\['b'\] must be a TransformSequence"):
        evaluate_sequences(model, images, None, {"a": ShiftSequence(max_shift=1), "b": [(0, 0)]})


def test_dataloader_input_uint8_images_and_restored_mode():
    torch.manual_seed(3)
    model = strided_net().train()
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    targets = torch.randint(0, 10, (10,))
    sequence = ScaleSequence([1.0, 0.9, 1.1])
    from_tensor = evaluate_invariance(model, images, targets, sequence)
    loader = DataLoader(TensorDataset(images, targets), batch_size=4)
    from_loader = evaluate_invariance(model, loader, None, sequence, progress=True)
    for key in from_tensor:
        torch.testing.assert_close(from_loader[key], from_tensor[key])
    assert model.training, "evaluate_invariance must restore train mode"
    direct = torch.stack([model.eval()(sequence.frame(images.float() / 255, t)) for t in range(3)], dim=1)
    torch.testing.assert_close(from_tensor["flip_rate"], transform_consistency(direct, targets)["flip_rate"])


def test_forward_fn_extracts_logits_from_other_outputs():
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = strided_net()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x)}

    model = DictModel()
    images = torch.rand(4, 3, 12, 12)
    seq = ShiftSequence(max_shift=2)
    with pytest.raises(
        TypeError, match=r"^class_logits: the model's outputs must be a floating-point \(N, C\), .* got dict"
    ):
        evaluate_invariance(model, images, None, seq)
    out = evaluate_invariance(model, images, None, seq, forward_fn=lambda m, x: m(x)["logits"])
    expected = evaluate_invariance(model.net, images, None, seq)
    torch.testing.assert_close(out["flip_rate"], expected["flip_rate"])


def test_bad_input_is_rejected_early():
    model = strided_net()
    seq = ShiftSequence(max_shift=2)
    with pytest.raises(ValueError, match="images is empty"):
        evaluate_invariance(model, torch.rand(0, 3, 8, 8), None, seq)
    with pytest.raises(ValueError, match=r"^iter_sequence_logits: targets must be None or of shape \(N,\) = \(4,\)"):
        evaluate_invariance(model, torch.rand(4, 3, 8, 8), torch.zeros(3, dtype=torch.long), seq)
    with pytest.raises(ValueError, match="targets must be None"):
        evaluate_invariance(model, [torch.rand(2, 3, 8, 8)], torch.zeros(2, dtype=torch.long), seq)
    with pytest.raises(ValueError, match="^iter_sequence_logits: batch_size must be an int >= 1, got 0$"):
        evaluate_invariance(model, torch.rand(4, 3, 8, 8), None, seq, batch_size=0)
    with pytest.raises(TypeError, match=r"^iter_sequence_logits: normalize must be a \(mean, std\) pair"):
        evaluate_invariance(model, torch.rand(4, 3, 8, 8), None, seq, normalize=(0.5,))
    with pytest.raises(TypeError, match="sequence must be a TransformSequence"):
        evaluate_invariance(model, torch.rand(4, 3, 8, 8), None, [(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="do not fit 8x8"):
        evaluate_invariance(model, torch.rand(4, 3, 8, 8), None, ShiftSequence(max_shift=8))


@pytest.mark.parametrize(
    "measure",
    [
        lambda model, images: evaluate_invariance(model, images, None, ShiftSequence(max_shift=2)),
        lambda model, images: layer_equivariance(model, images),
    ],
    ids=["evaluate_invariance", "layer_equivariance"],
)
def test_a_frozen_batchnorm_stays_frozen_in_a_training_model(measure):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).train()
    model[1].eval()  # the user froze this BatchNorm
    statistics = [model[1].running_mean.clone(), model[1].running_var.clone()]
    measure(model, torch.rand(5, 3, 8, 8))
    assert [m.training for m in model] == [True, False, True, True, True, True]
    assert model.training
    assert torch.equal(model[1].running_mean, statistics[0]) and torch.equal(model[1].running_var, statistics[1])


def test_default_top_k_on_a_three_class_model_is_the_full_ranking_distance():
    # The model returns the 3 pixels of a 1x3 image as logits. Frames (dx = 0, +1, -1, fill 0):
    # [1, 3, 2] -> [0, 1, 3] -> [3, 2, 0]; ranks [1, 2, 0] -> [2, 1, 0] -> [0, 1, 2]: 2 and 2 of 3 positions change.
    images = torch.tensor([[[[1.0, 3.0, 2.0]]]])
    sequence = ShiftSequence(shifts=[(0, 0), (1, 0), (-1, 0)], mode="zeros")
    out = evaluate_invariance(nn.Flatten(), images, None, sequence)  # top_k=5 by default, C=3
    assert out["top5_distance"].item() == 2.0
    assert evaluate_invariance(nn.Flatten(), images, None, sequence, top_k=3)["top3_distance"].item() == 2.0
    assert evaluate_invariance(nn.Flatten(), images, None, sequence, top_k=2)["top2_distance"].item() == 1.5
    assert out["flip_rate"].item() == 1.0


def test_the_content_preset_sees_only_the_lost_border_in_a_circularly_invariant_net():
    """A net exactly invariant to circular shifts classifies each zero-filled frame as its masked frame (the frame is
    the roll of the masked one), so both walks give the same numbers; a strided net's walks differ."""
    torch.manual_seed(6)
    images, targets = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    sequences = sequence_preset("content")
    assert list(sequences) == ["shift", "shift_masked"] and len(sequences["shift"]) == 9
    invariant = evaluate_sequences(circular_invariant_net().eval(), images, targets, sequences)
    for key in ("flip_rate", "per_frame_flip_rate", "per_frame_accuracy", "mac", "top5_distance"):
        torch.testing.assert_close(invariant["shift"][key], invariant["shift_masked"][key], rtol=1e-5, atol=1e-6)
    strided = evaluate_sequences(strided_net().eval(), images, targets, sequences)
    assert abs(float(strided["shift"]["top5_distance"] - strided["shift_masked"]["top5_distance"])) > 0.1
