"""TransformConsistency and transform_consistency on hand-worked cases and by additivity."""

from __future__ import annotations

import math

import pytest
import torch

from invariance_lightning import TransformConsistency, transform_consistency


def one_hot_logits(preds: list[list[int]], num_classes: int = 3, scale: float = 5.0) -> torch.Tensor:
    """Logits whose argmax per (image, frame) is ``preds``."""
    return torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float() * scale


def test_hand_worked_flip_rate_consistency_and_accuracy():
    # image 0 predictions along 4 frames: 0 0 1 1 -> 1 flip of 3; agreeing pairs: (0,1), (2,3) = 2 of 6
    # image 1: 2 0 2 2 -> 2 flips of 3; agreeing pairs: (0,2), (0,3), (2,3) = 3 of 6
    logits = one_hot_logits([[0, 0, 1, 1], [2, 0, 2, 2]])
    target = torch.tensor([0, 2])
    out = transform_consistency(logits, target, top_k=None)
    assert set(out) == {
        "flip_rate",
        "consistency",
        "mac",
        "per_frame_flip_rate",
        "accuracy",
        "worst_case_accuracy",
        "per_frame_accuracy",
    }
    assert out["flip_rate"].item() == pytest.approx(3 / 6)
    torch.testing.assert_close(out["per_frame_flip_rate"], torch.tensor([0.5, 1.0, 0.0]))
    assert out["consistency"].item() == pytest.approx(5 / 12)
    # correct: image 0 frames 0,1; image 1 frames 0,2,3
    torch.testing.assert_close(out["per_frame_accuracy"], torch.tensor([1.0, 0.5, 0.5, 0.5]))
    assert out["accuracy"].item() == pytest.approx(5 / 8)
    assert out["worst_case_accuracy"].item() == 0.0


def test_hand_worked_mac():
    # one image, two classes: p(frame) = softmax([a, 0])
    a = torch.tensor([2.0, 1.0, -1.0])
    logits = torch.stack([a, torch.zeros(3)], dim=-1)[None]  # (1, 3, 2)
    p0 = [1 / (1 + math.exp(-v)) for v in a.tolist()]  # probability of class 0 per frame
    # frame 0 -> 1: top-1 of frame 0 is class 0: |p0[1] - p0[0]|; frame 1 -> 2: top-1 of frame 1 is class 0
    expected = (abs(p0[1] - p0[0]) + abs(p0[2] - p0[1])) / 2
    out = transform_consistency(logits, top_k=None)
    assert out["mac"].item() == pytest.approx(expected, rel=1e-6)
    assert out["flip_rate"].item() == pytest.approx(0.5)


def test_hand_worked_topk_distance():
    # ranks by decreasing logit per frame, k = 2: [0, 1] -> [1, 0] (2 differ) -> [1, 2] (1 differs)
    logits = torch.tensor([[[3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 3.0, 2.0]]])
    out = transform_consistency(logits, top_k=2)
    assert out["top2_distance"].item() == pytest.approx((2 + 1) / 2)
    assert "top5_distance" in transform_consistency(torch.randn(4, 3, 10))


def test_identical_frames_are_perfectly_consistent():
    logits = torch.randn(5, 1, 10).expand(5, 6, 10)
    out = transform_consistency(logits, torch.randint(0, 10, (5,)))
    assert out["flip_rate"].item() == 0.0
    assert out["consistency"].item() == 1.0
    assert out["mac"].item() == 0.0
    assert out["top5_distance"].item() == 0.0
    assert out["worst_case_accuracy"].item() == out["accuracy"].item()


def test_metric_updates_and_merges_equal_one_call_on_the_concatenation():
    logits = torch.randn(13, 5, 10)
    target = torch.randint(0, 10, (13,))
    expected = transform_consistency(logits, target)

    two_updates = TransformConsistency()
    two_updates.update(logits[:6], target[:6])
    two_updates.update(logits[6:], target[6:])

    first, second = TransformConsistency(), TransformConsistency()
    first.update(logits[:4], target[:4])
    second.update(logits[4:], target[4:])
    first.merge_state(second)

    for result in (two_updates.compute(), first.compute()):
        assert result.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(result[key], expected[key])


def test_metric_reset_and_empty_batches():
    metric = TransformConsistency(num_frames=3)
    metric.update(torch.randn(0, 3, 10), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no images were measured"):
        metric.compute()
    logits = torch.randn(4, 3, 10)
    metric.update(logits)
    assert set(metric.compute()) == {"flip_rate", "consistency", "mac", "per_frame_flip_rate", "top5_distance"}
    metric.reset()
    metric.update(logits)
    torch.testing.assert_close(metric.compute()["flip_rate"], transform_consistency(logits)["flip_rate"])


@pytest.mark.parametrize(
    "logits,target,error,match",
    [
        (
            torch.randn(4, 10),
            None,
            ValueError,
            r"^(transform_consistency|TransformConsistency): logits must be a floating-point \(N, T, C\) .*got shape \(4, 10\)$",
        ),
        (torch.randn(4, 1, 10), None, ValueError, r"T >= 2 frames .* got shape \(4, 1, 10\)$"),
        (torch.full((2, 3, 10), float("nan")), None, ValueError, "NaN or infinite"),
        (
            torch.randn(2, 3, 10).index_put((torch.tensor([0]),), torch.tensor(float("inf"))),
            None,
            ValueError,
            "NaN or infinite",
        ),
        (
            torch.randn(4, 3, 10),
            torch.zeros(3, dtype=torch.long),
            ValueError,
            r"^(transform_consistency|TransformConsistency): target must be .* of shape \(N,\) = \(4,\), got shape \(3,\)$",
        ),
        (torch.randn(4, 3, 10), torch.tensor([0, 1, 2, 10]), ValueError, r"class indices in \[0, 10\)"),
        (torch.randn(4, 3, 10), torch.tensor([0, 1, 2, -1]), ValueError, r"class indices in \[0, 10\)"),
        (
            torch.randn(4, 3, 10),
            torch.zeros(4),
            TypeError,
            r"target must be an integer tensor .* got dtype torch.float32$",
        ),
        (torch.randint(0, 3, (4, 3, 10)), None, TypeError, "logits must be a floating-point .* got dtype torch.int64$"),
    ],
)
def test_bad_input_raises_a_clear_error(logits, target, error, match):
    with pytest.raises(error, match=match):
        transform_consistency(logits, target)
    with pytest.raises(error, match=match):
        TransformConsistency().update(logits, target)


@pytest.mark.parametrize(("top_k", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError)])
def test_bad_top_k_is_rejected_by_the_function_and_the_metric(top_k, error):
    with pytest.raises(error, match="^transform_consistency: top_k must be None or an int >= 1, got"):
        transform_consistency(torch.randn(2, 3, 4), top_k=top_k)
    with pytest.raises(error, match="^TransformConsistency: top_k must be None or an int >= 1, got"):
        TransformConsistency(top_k=top_k)


def test_function_rejects_logits_without_images():
    with pytest.raises(ValueError, match="at least one image, got N=0"):
        transform_consistency(torch.randn(0, 3, 4))


# One image, 3 frames, C = 3 classes. Ranks by decreasing logit: [1, 2, 0] -> [2, 1, 0] -> [0, 1, 2].
# Positions that change: frame 0 -> 1: 1st and 2nd (2 of 3); frame 1 -> 2: 1st and 3rd (2 of 3).
# top-3 distance (the full ranking) = (2 + 2) / 2 = 2; top-2 distance = (2 + 1) / 2 = 1.5.
FULL_RANKING_LOGITS = torch.tensor([[[1.0, 3.0, 2.0], [0.0, 1.0, 3.0], [3.0, 2.0, 0.0]]])


def test_top_k_above_the_class_count_is_the_full_ranking_distance():
    assert transform_consistency(FULL_RANKING_LOGITS, top_k=2)["top2_distance"].item() == 1.5
    assert transform_consistency(FULL_RANKING_LOGITS, top_k=3)["top3_distance"].item() == 2.0
    out = transform_consistency(FULL_RANKING_LOGITS, top_k=5)  # default top_k on a 3-class model
    assert "top3_distance" not in out  # the key keeps the requested k
    assert out["top5_distance"].item() == 2.0
    for metric in (TransformConsistency(top_k=5), TransformConsistency(num_classes=3, top_k=5)):
        metric.update(FULL_RANKING_LOGITS)
        assert metric.compute()["top5_distance"].item() == 2.0


def test_hand_worked_mac_follows_the_top1_class_of_the_previous_frame():
    # Probabilities per frame (logits = log p, so softmax gives p back); the top-1 class changes at every step.
    probs = torch.tensor(
        [
            [[0.70, 0.20, 0.10], [0.30, 0.65, 0.05], [0.50, 0.30, 0.20]],  # top-1: 0, 1, 0
            [[0.10, 0.10, 0.80], [0.10, 0.80, 0.10], [0.20, 0.20, 0.60]],  # top-1: 2, 1, 2
        ],
        dtype=torch.float64,
    )
    # c = top-1 class of frame t-1:
    # image 0: t=1, c=0: |0.30 - 0.70| = 0.40; t=2, c=1: |0.30 - 0.65| = 0.35
    # image 1: t=1, c=2: |0.10 - 0.80| = 0.70; t=2, c=1: |0.20 - 0.80| = 0.60
    # Following frame t's class instead would give (0.45 + 0.20 + 0.70 + 0.50) / 4 = 0.4625, and the change of
    # the largest probability (0.05 + 0.15 + 0.00 + 0.20) / 4 = 0.1.
    expected = (0.40 + 0.35 + 0.70 + 0.60) / 4  # 0.5125
    logits = probs.log()
    assert transform_consistency(logits, top_k=None)["mac"].item() == pytest.approx(expected, abs=1e-6)
    metric = TransformConsistency(top_k=None)
    metric.update(logits[:1])
    metric.update(logits[1:])
    assert metric.compute()["mac"].item() == pytest.approx(expected, abs=1e-6)


def test_metric_rejects_changing_frame_count_class_count_and_mixed_targets():
    metric = TransformConsistency(num_classes=10)
    metric.update(torch.randn(2, 4, 10))
    with pytest.raises(
        ValueError, match=r"^TransformConsistency: logits must have the T=4 frames it has seen .* got T=5$"
    ):
        metric.update(torch.randn(2, 5, 10))
    with pytest.raises(ValueError, match="num_classes=10"):
        metric.update(torch.randn(2, 4, 7))
    metric.update(torch.randn(2, 4, 10), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="target was given for 2 of 4 images"):
        metric.compute()
    with pytest.raises(ValueError, match="num_frames must be"):
        TransformConsistency(num_frames=1)
