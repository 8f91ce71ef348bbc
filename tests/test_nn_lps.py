"""Learnable polyphase sampling: the layer, its three doors (cifar_resnet, antialias, build_backbone) and the
temperature schedule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from invariance_lightning.lightning.callbacks import GumbelTemperature
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.models import antialias, build_backbone, cifar_resnet, load_cifar_resnet
from invariance_lightning.nn import APS2dFollower, LPS2d, polyphase_components
from lightning_helpers import ClassifierSteps, tiny_loader, tiny_trainer


def test_components_are_the_strided_subsamplings_in_row_major_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    components = polyphase_components(x, 2)
    assert components.shape == (2, 4, 3, 2, 3)
    for i in range(2):
        for j in range(2):
            assert torch.equal(components[:, 2 * i + j], x[:, :, i::2, j::2])


def test_a_circular_shift_permutes_the_scores_and_eval_mode_keeps_the_shifted_component():
    torch.manual_seed(0)
    layer = LPS2d(4).eval()
    x = torch.randn(3, 4, 8, 8)
    shifted = torch.roll(x, (1, 3), dims=(2, 3))  # odd shifts: every component changes place
    assert torch.allclose(layer.scores(shifted).sort(dim=1).values, layer.scores(x).sort(dim=1).values, atol=1e-6)
    with torch.no_grad():
        out, out_shifted = layer(x), layer(shifted)
    # each image's output is its own, circularly shifted on the half-resolution grid (by how much depends on which
    # component it keeps)
    for image, image_shifted in zip(out, out_shifted):
        rolls = [torch.roll(image, (dy, dx), dims=(1, 2)) for dy in range(4) for dx in range(4)]
        assert any(torch.equal(rolled, image_shifted) for rolled in rolls)


def test_training_samples_reproducibly_under_a_seed_and_passes_gradients_to_the_scorer():
    layer = LPS2d(4).train()
    x = torch.randn(5, 4, 8, 8)
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    again = layer(x)
    torch.manual_seed(4)
    other = layer(x)
    assert torch.equal(first, again) and not torch.equal(first, other)
    first.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.scorer.parameters())


def test_the_follower_subsamples_with_the_leaders_choice_in_training_and_evaluation():
    leader = LPS2d(4)
    follower = APS2dFollower(leader)
    x = torch.randn(3, 4, 8, 8)
    for training in (True, False):
        leader.train(training)
        torch.manual_seed(0)
        main = leader(x)
        assert torch.equal(follower(x), main)  # the same input, the same choice
    with pytest.raises(RuntimeError, match="ran before its leader LPS2d chose"):
        follower(x)


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """Random images with large-scale structure (upsampled 4x4 noise plus fine noise), in [0, 1]: unlike uniform
    noise, they make a random network's predictions differ between images."""
    generator = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(count, 3, 4, 4, generator=generator), size=32, mode="bilinear")
    return (coarse + 0.1 * torch.rand(count, 3, 32, 32, generator=generator)).clamp(0, 1)


@pytest.mark.parametrize(("downsample", "exact"), [("lps", True), ("stride", False)])
def test_an_lps_network_with_circular_padding_is_exactly_circular_shift_consistent(downsample, exact):
    torch.manual_seed(0)
    model = cifar_resnet(20, downsample=downsample, padding_mode="circular", filter_size=1)
    images, labels = smooth_images(48, seed=0), torch.randint(0, 10, (48,))
    with torch.no_grad():
        model(images)  # batch-norm statistics of these images (a fresh network's would flatten every prediction)
        model.eval()
        assert model(images).argmax(1).unique().numel() > 1, "a constant predictor would be trivially consistent"
    consistency = evaluate_protocol(model, images, labels, "aps2021_circular", seed=0)["consistency"]
    assert (consistency == 1.0) == exact, consistency


def test_state_dicts_round_trip_strictly_with_the_temperature():
    torch.manual_seed(0)
    source = cifar_resnet(20, downsample="lps").eval()
    for layer in source.modules():
        if isinstance(layer, LPS2d):
            layer.set_temperature(0.25)
    copy = cifar_resnet(20, downsample="lps").eval()
    copy.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy(x), source(x))
    assert {float(m.temperature) for m in copy.modules() if isinstance(m, LPS2d)} == {0.25}


def test_every_door_builds_lps():
    resnet18 = antialias(torchvision.models.resnet18(num_classes=5), method="lps")
    backbone = build_backbone("cifar_resnet20", 10, downsample="lps")
    for model in (resnet18, backbone):
        assert any(isinstance(m, LPS2d) for m in model.modules())
    with torch.no_grad():
        assert resnet18.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels": 0}, ValueError, "^LPS2d: channels must be an int >= 1, got 0$"),
        ({"channels": 4, "padding_mode": "reflect"}, ValueError, "padding_mode must be one of"),
        ({"channels": 4, "temperature": 0}, ValueError, "temperature must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        LPS2d(**kwargs)


class TinyLPSClassifier(ClassifierSteps, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), LPS2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemperatureLog(pl.Callback):
    """The LPS temperature each training epoch ran with (read after GumbelTemperature set it)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append(float(pl_module.net[1].temperature))


def test_the_temperature_decays_geometrically_per_epoch_and_resumes_where_it_stopped(tmp_path):
    schedule = GumbelTemperature(start=1.0, end=0.01)
    expected = [1.0, 0.1, 0.01]
    log = TemperatureLog()
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer = tiny_trainer(tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[schedule, log, every_epoch])
    trainer.fit(TinyLPSClassifier(), tiny_loader(32, seed=1), tiny_loader(8, seed=2))
    assert log.seen == pytest.approx(expected)
    assert math.isclose(float(trainer.callback_metrics["train/lps_temperature"]), 0.01, rel_tol=1e-6)

    resumed = TemperatureLog()
    trainer = tiny_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[GumbelTemperature(1.0, 0.01), resumed]
    )
    trainer.fit(
        TinyLPSClassifier(),
        tiny_loader(32, seed=1),
        tiny_loader(8, seed=2),
        ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"),
    )
    assert resumed.seen == pytest.approx(expected[1:])


def test_the_schedule_refuses_a_module_without_lps(tmp_path):
    from lightning_helpers import TinyClassifier

    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[GumbelTemperature()])
    with pytest.raises(ValueError, match="GumbelTemperature: the module has no LPS2d layer"):
        trainer.fit(TinyClassifier(), tiny_loader(16), tiny_loader(8))


def test_weights_of_a_network_without_lps_load_into_an_lps_network_whose_scorers_keep_their_initialization(tmp_path):
    torch.manual_seed(0)
    saved = cifar_resnet(20)
    torch.save({"state_dict": saved.state_dict()}, tmp_path / "r20.th")
    target = cifar_resnet(20, downsample="lps")
    scorers = {k: v.clone() for k, v in target.state_dict().items() if ".scorer." in k}
    loaded = load_cifar_resnet(tmp_path / "r20.th", model=target)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())
    assert scorers and all(torch.equal(state[k], v) for k, v in scorers.items())
    torch.save({"state_dict": cifar_resnet(32).state_dict()}, tmp_path / "r32.th")
    with pytest.raises(ValueError, match="do not fit this CifarResNet"):
        load_cifar_resnet(tmp_path / "r32.th", model=cifar_resnet(20, downsample="lps"))
