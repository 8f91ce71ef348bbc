"""Consistency regularization: loss values against direct formulas, and a tiny CIFAR run where it lowers flips."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invariance_lightning.augment import CONSISTENCY_KINDS, ConsistencyRegularization, consistency_loss


def probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).numpy()


def test_losses_match_direct_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    p, q = probabilities(a), probabilities(b)
    kl_pq = (p * np.log(p / q)).sum(1)
    kl_qp = (q * np.log(q / p)).sum(1)
    m = (p + q) / 2
    js = ((p * np.log(p / m)).sum(1) + (q * np.log(q / m)).sum(1)) / 2
    centred_a, centred_b = a.double().numpy(), b.double().numpy()
    centred_a, centred_b = centred_a - centred_a.mean(1, keepdims=True), centred_b - centred_b.mean(1, keepdims=True)
    expected = {
        "symmetric_kl": ((kl_pq + kl_qp) / 2).mean(),
        "js": js.mean(),
        "mse": ((p - q) ** 2).sum(1).mean(),
        "logit_mse": ((centred_a - centred_b) ** 2).mean(),
    }
    assert set(expected) == set(CONSISTENCY_KINDS) - {"top1_margin"}  # not a divergence: its own test below
    for kind in expected:
        assert consistency_loss(a, b, kind) == pytest.approx(expected[kind], rel=1e-5), kind
        assert consistency_loss(b, a, kind) == pytest.approx(expected[kind], rel=1e-5), kind  # symmetric
        assert float(consistency_loss(a, a + 7.0, kind)) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant


def test_top1_margin_asks_both_views_to_lead_with_their_joint_class_by_one_logit() -> None:
    # worked by hand: log p_a = a - 2.2395, log p_b = b - 1.8690; their sum is largest for class 0, which leads by
    # 2 logits in view a (no shortfall) and trails class 1 by 1.5 in view b (shortfall 1 + 1.5 = 2.5)
    a, b = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.5, 0.0]])
    assert float(consistency_loss(a, b, "top1_margin")) == pytest.approx(1.25, rel=1e-6)
    assert float(consistency_loss(b, a, "top1_margin")) == pytest.approx(1.25, rel=1e-6)
    # a batch: agreeing by more than the margin costs nothing; a near tie that flips costs about the margin per view
    tie = torch.tensor([[0.02, -0.02, -9.0], [5.0, 0.0, 0.0]])
    flipped = torch.tensor([[-0.02, 0.02, -9.0], [9.0, 0.5, 0.0]])
    # row 1: joint class 0 (an exact tie breaks to the first), leading by 0.04 in one view and trailing by 0.04 in the
    # other; row 2 agrees by more than the margin
    shortfall = ((1 - 0.04) + (1 + 0.04)) / 2
    assert float(consistency_loss(tie, flipped, "top1_margin")) == pytest.approx(shortfall / 2, rel=1e-5)
    assert float(consistency_loss(tie[:1], flipped[:1], "symmetric_kl")) < 2e-3  # what a divergence makes of the flip
    assert float(consistency_loss(a + 7.0, b, "top1_margin")) == pytest.approx(1.25, rel=1e-6)  # offsets: ignored
    logits = torch.tensor([[0.2, 0.0, 0.0]], requires_grad=True)
    consistency_loss(logits, logits.detach(), "top1_margin").backward()
    assert logits.grad is not None and logits.grad[0, 0] < 0 < logits.grad[0, 1]  # raises the leader, lowers the rival


def test_js_is_bounded_by_log2_for_disjoint_predictions() -> None:
    a = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert float(consistency_loss(a, a.flip(1), "js")) == pytest.approx(math.log(2), rel=1e-6)


def test_loss_rejects_bad_input() -> None:
    with pytest.raises(
        ValueError,
        match=r"^consistency_loss: kind must be one of \('symmetric_kl', 'js', 'mse', 'logit_mse', 'top1_margin'\), got",
    ):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 3), "kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="tensors"):
        consistency_loss([[0.0]], torch.zeros(1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^ConsistencyRegularization: weight must be a finite number >= 0, got -1.0$"):
        ConsistencyRegularization(-1.0)
    with pytest.raises(ValueError, match="^ConsistencyRegularization: max_shift must be an int >= 1, got 0$"):
        ConsistencyRegularization(1.0, max_shift=0)
    with pytest.raises(TypeError, match="^ConsistencyRegularization: max_shift must be an int >= 1, got float 1.5$"):
        ConsistencyRegularization(1.0, max_shift=1.5)
    reg = ConsistencyRegularization(1.0, view=lambda x: x[:, :, 1:])
    with pytest.raises(ValueError, match="keep the batch shape"):
        reg(nn.Flatten(), torch.zeros(2, 1, 4, 4))


def test_regularizer_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 7 * 7, 3))
    images = torch.randn(6, 3, 16, 16)
    logits, penalty = ConsistencyRegularization(0.0)(model, images)
    assert torch.equal(logits, model(images)) and float(penalty) == 0.0
    shifted = images.roll(1, dims=-1)
    reg = ConsistencyRegularization(2.5, view=lambda x: x.roll(1, dims=-1), kind="js")
    logits, penalty = reg(model, images)
    assert torch.allclose(logits, model(images), atol=1e-6)
    with torch.no_grad():
        expected = 2.5 * float(consistency_loss(model(images), model(shifted), "js"))
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    assert model[0].weight.grad is not None and float(model[0].weight.grad.abs().sum()) > 0
    # The default view shifts each image by at most one pixel, zero-filling the uncovered border.
    captured: list[torch.Tensor] = []
    ConsistencyRegularization(1.0)(lambda x: captured.append(x) or x.flatten(1), images)
    original, view = captured[0].split(len(images))
    for i in range(len(images)):
        padded = F.pad(original[i], (1, 1, 1, 1))
        assert any(torch.equal(view[i], padded[:, t : t + 16, x : x + 16]) for t in range(3) for x in range(3))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def test_default_view_fills_the_vacated_border_with_normalized_black() -> None:
    # The images a model gets are normalized, so a zero fill would be the mean colour, not black.
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    black = (0 - mean) / std  # float32, as the input pipeline computes it
    raw = torch.rand(8, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    images = (raw - mean[:, None, None]) / std[:, None, None]
    captured: list[torch.Tensor] = []
    reg = ConsistencyRegularization(1.0, max_shift=2, mean=CIFAR_MEAN, std=CIFAR_STD)
    reg(lambda x: captured.append(x) or x.flatten(1), images)
    view = captured[0][len(images) :]
    offsets = []
    for original, shifted in zip(images, view):
        canvas = black[:, None, None].repeat(1, 6 + 4, 7 + 4)
        canvas[:, 2:-2, 2:-2] = original
        matches = [(t, x) for t in range(5) for x in range(5) if torch.equal(shifted, canvas[:, t : t + 6, x : x + 7])]
        assert matches, "the view must be the image shifted by whole pixels over a black border"
        offsets.append(matches[0])
    assert any(offset != (2, 2) for offset in offsets), "some images must be shifted for the border to show"
    no_stats = ConsistencyRegularization(1.0, max_shift=2)
    captured.clear()
    no_stats(lambda x: captured.append(x) or x.flatten(1), images)
    assert no_stats.fill == 0.0 and reg.fill == tuple(black.tolist())


def test_mean_and_std_are_checked() -> None:
    with pytest.raises(
        TypeError, match=r"^ConsistencyRegularization: mean and std must be a \(mean, std\) pair .* None\)$"
    ):
        ConsistencyRegularization(1.0, mean=CIFAR_MEAN)
    with pytest.raises(ValueError, match="a custom `view` fills its own border"):
        ConsistencyRegularization(1.0, view=lambda x: x, mean=CIFAR_MEAN, std=CIFAR_STD)
    with pytest.raises(ValueError, match=r"^ConsistencyRegularization: mean and std must be .* with std > 0"):
        ConsistencyRegularization(1.0, mean=CIFAR_MEAN, std=(0.2, 0.0, 0.2))
    with pytest.raises(
        ValueError, match=r"^ConsistencyRegularization: images must have C=3 channels .* \(2, 1, 4, 4\)"
    ):
        ConsistencyRegularization(1.0, mean=CIFAR_MEAN, std=CIFAR_STD)(nn.Flatten(), torch.zeros(2, 1, 4, 4))


def tiny_cnn() -> nn.Module:
    # Stride-2 convolutions without antialiasing: far from shift-invariant, as in Azulay & Weiss.
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 32), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def one_pixel_flip_rate(model: nn.Module, images: torch.Tensor) -> float:
    """Fraction of (image, one-pixel circular shift) pairs whose argmax differs from the unshifted image's."""
    with torch.no_grad():
        reference = model(images).argmax(1)
        flips = [
            (model(images.roll(shift, dims=(-2, -1))).argmax(1) != reference).float().mean()
            for shift in ((0, 1), (0, -1), (1, 0), (-1, 0))
        ]
    return float(torch.stack(flips).mean())


def train(weight: float, images: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_cnn()
    reg = ConsistencyRegularization(weight, mean=CIFAR_MEAN, std=CIFAR_STD)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (64,), generator=order)
        logits, penalty = reg(model, images[batch])
        loss = F.cross_entropy(logits, labels[batch]) + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def load_cifar(path: Path, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as data:
        rows = np.random.default_rng(seed).permutation(len(data["labels"]))[:count]  # files are sorted by class
        images = torch.from_numpy(data["images"][rows]).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(data["labels"][rows])
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    return (images - mean[:, None, None]) / std[:, None, None], labels


@pytest.fixture
def one_thread() -> Iterator[None]:
    # A tiny CNN gains nothing from intra-op threads, and they spin and slow down tenfold on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.shared_data
@pytest.mark.usefixtures("one_thread")
def test_consistency_regularization_lowers_one_pixel_flip_rate(cifar10_dir: Path) -> None:
    images, labels = load_cifar(cifar10_dir / "cifar10_train.npz", 4000, seed=0)
    test_images, test_labels = load_cifar(cifar10_dir / "cifar10_test.npz", 1000, seed=0)
    baseline, regularized = train(0.0, images, labels), train(3.0, images, labels)
    flips_baseline = one_pixel_flip_rate(baseline, test_images)
    flips_regularized = one_pixel_flip_rate(regularized, test_images)
    with torch.no_grad():
        accuracy = {
            name: float((model(test_images).argmax(1) == test_labels).float().mean())
            for name, model in (("baseline", baseline), ("regularized", regularized))
        }
    print(
        f"\none-pixel flip rate: weight 0 {flips_baseline:.3f}, weight 3 {flips_regularized:.3f}; "
        f"test accuracy: weight 0 {accuracy['baseline']:.3f}, weight 3 {accuracy['regularized']:.3f}"
    )
    assert flips_regularized < 0.8 * flips_baseline, (flips_baseline, flips_regularized)
    assert accuracy["regularized"] > 0.3  # not bought by collapsing to a constant prediction (chance is 0.1)
