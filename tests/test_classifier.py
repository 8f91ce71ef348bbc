"""ImageClassifier and build_backbone: backbones by name, training on uint8 batches, options and errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invariance_lightning import BlurPool2d, ImageClassifier, locations
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, cifar_resnet
from invariance_lightning.models.factory import build_backbone
from invariance_lightning.models.pretrained import SHARED_DIR_ENV, SHARED_WEIGHTS_SUBDIR

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def uint8_loader(num: int = 32, size: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, (num,), generator=generator)
    return DataLoader(TensorDataset(images, targets), batch_size=8)


def tiny_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.mark.parametrize("name", ["cifar_resnet20", "torchvision:resnet18", "timm:resnet18"])
def test_build_backbone_by_name_with_antialiasing(name):
    model = build_backbone(name, 7, downsample="blur").eval()
    assert any(isinstance(m, BlurPool2d) for m in model.modules()), "blur must insert BlurPool layers"
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_build_backbone_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet20'; use cifar_resnet<depth>"):
        build_backbone("resnet20", 10)
    with pytest.raises(ValueError, match="CIFAR ResNet depths"):
        build_backbone("cifar_resnet21", 10)
    with pytest.raises(ValueError, match="downsample must be one of"):
        build_backbone("cifar_resnet20", 10, downsample="max")
    with pytest.raises(ValueError, match="only supported for cifar_resnet"):
        build_backbone("torchvision:resnet18", 10, padding_mode="circular")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        build_backbone("torchvision:resnet18", 10, downsample="blur", padding_mode="reflect")


@pytest.mark.parametrize("schedule,optimizer", [("onecycle", "sgd"), ("cosine", "adamw"), ("none", "sgd")])
def test_trains_on_uint8_batches_and_logs(tmp_path, schedule, optimizer):
    pl.seed_everything(0)
    model = ImageClassifier(
        tiny_backbone(),
        augmentation="standard",
        image_size=16,
        mean=MEAN,
        std=STD,
        schedule=schedule,
        optimizer=optimizer,
        lr=0.05,
        channels_last=True,
    )
    before = [p.detach().clone() for p in model.parameters()]
    run = trainer(tmp_path)
    run.fit(model, uint8_loader(seed=0), uint8_loader(seed=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "weights must change"
    metrics = run.callback_metrics
    assert {"train/loss", "val/acc", "val/loss", "train/images_per_second"} <= set(metrics)
    assert float(metrics["train/images_per_second"]) > 0
    assert model.input_normalization == (MEAN, STD)


def test_consistency_penalty_is_logged_and_added(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier(
        tiny_backbone(), augmentation="none", image_size=16, mean=MEAN, std=STD, consistency_weight=2.0
    )
    run = trainer(tmp_path, limit_val_batches=0)
    run.fit(model, uint8_loader())
    assert float(run.callback_metrics["train/consistency_penalty"]) > 0


def test_consistency_view_border_is_black_after_normalization():
    # A white image normalized by the classifier's pipeline; the shifted view may only hold white and, where it
    # was shifted, the normalized black (0 - mean) / std: not 0, which is the mean colour after normalization.
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    model = ImageClassifier(
        tiny_backbone(), augmentation="none", image_size=8, mean=mean, std=std, consistency_weight=1.0
    )
    white = model.gpu_augmentation(torch.full((16, 3, 8, 8), 255, dtype=torch.uint8), train=False)
    black = (0 - torch.tensor(mean)) / torch.tensor(std)
    captured = []
    model.consistency(lambda x: captured.append(x) or x.flatten(1), white)
    view = captured[0][16:]
    is_white = view == white[:1]
    is_black = view == black[None, :, None, None]
    assert bool((is_white | is_black).all())
    assert int(is_black.sum()) > 0, "some images must be shifted for the border to show"


def test_mean_and_std_come_from_the_datamodule_or_fail_clearly(tmp_path):
    class StatsDataModule(pl.LightningDataModule):
        mean, std = MEAN, STD

        def train_dataloader(self):
            return uint8_loader()

    model = ImageClassifier(tiny_backbone(), augmentation="none", image_size=16, consistency_weight=1.0)
    trainer(tmp_path, max_steps=1).fit(model, datamodule=StatsDataModule())
    assert model.input_normalization == (MEAN, STD) and model.input_normalization.mean == MEAN
    assert model.consistency.fill == (-2.0, -2.0, -2.0)  # black, (0 - 0.5) / 0.25, once the statistics are known
    with pytest.raises(ValueError, match="ImageClassifier needs mean/std"):
        trainer(tmp_path, max_steps=1).fit(ImageClassifier(tiny_backbone(), image_size=16), uint8_loader())


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="^ImageClassifier: optimizer must be one of .* got 'lamb'$"):
        ImageClassifier(tiny_backbone(), optimizer="lamb")
    with pytest.raises(ValueError, match="^ImageClassifier: schedule must be one of .* got 'step'$"):
        ImageClassifier(tiny_backbone(), schedule="step")
    with pytest.raises(ValueError, match="give both mean and std"):
        ImageClassifier(tiny_backbone(), mean=MEAN)


def test_checkpoint_keeps_the_normalization_readable_with_weights_only(tmp_path):
    # input_normalization is a Normalization (a NamedTuple); the checkpoint stores it as a plain (mean, std) tuple,
    # because torch.load(weights_only=True) refuses to unpickle classes it does not know
    model = ImageClassifier(tiny_backbone(), augmentation="none", image_size=16, mean=MEAN, std=STD)
    run = trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    run.fit(model, uint8_loader())
    path = tmp_path / "last.ckpt"
    run.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["input_normalization"] == (MEAN, STD) and type(checkpoint["input_normalization"]) is tuple
    restored = ImageClassifier.load_from_checkpoint(path, backbone=tiny_backbone())
    assert restored.input_normalization == (MEAN, STD) and restored.input_normalization.std == STD


def test_init_weights_are_loaded_when_fit_starts_and_not_when_it_resumes(tmp_path):
    saved = cifar_resnet(20, num_classes=10)
    torch.nn.init.normal_(saved.linear.weight)  # unlike a fresh initialization
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}}, tmp_path / "r20.th")
    options = dict(
        backbone="cifar_resnet20",
        downsample="blur",
        augmentation="none",
        image_size=16,
        mean=MEAN,
        std=STD,
        lr=0.0,
        schedule="none",
        weight_decay=0.0,
    )
    model = ImageClassifier(**options, init_weights=str(tmp_path / "r20.th"))
    assert not torch.equal(model.backbone.linear.weight, saved.linear.weight), "nothing is loaded before fit"
    run = trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    run.fit(model, uint8_loader())
    assert torch.equal(model.backbone.linear.weight, saved.linear.weight)  # lr 0: the loaded weights, unchanged
    run.save_checkpoint(tmp_path / "last.ckpt")
    # resuming restores the checkpoint and no longer needs the file
    (tmp_path / "r20.th").unlink()
    resumed = ImageClassifier(**options, init_weights=str(tmp_path / "r20.th"))
    trainer(tmp_path, max_steps=2).fit(resumed, uint8_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert torch.equal(resumed.backbone.linear.weight, saved.linear.weight)
    with pytest.raises(FileNotFoundError, match="r20.th.*no such file"):
        trainer(tmp_path, max_steps=1).fit(
            ImageClassifier(**options, init_weights=str(tmp_path / "r20.th")), uint8_loader()
        )


def test_a_released_model_name_is_found_in_the_shared_folder_and_sets_the_normalization(tmp_path, monkeypatch):
    folder = tmp_path / SHARED_WEIGHTS_SUBDIR
    folder.mkdir(parents=True)
    saved = cifar_resnet(20)
    torch.save(saved.state_dict(), folder / "resnet20-test.th")
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))
    model = ImageClassifier(
        "cifar_resnet20", augmentation="none", image_size=16, lr=0.0, schedule="none", init_weights="resnet20"
    )
    assert model.input_normalization == CIFAR_RESNET_NORMALIZE  # the release's statistics, not the datamodule's
    trainer(tmp_path, max_steps=1).fit(model, uint8_loader())
    assert torch.equal(model.backbone.conv1.weight, saved.conv1.weight)
    with pytest.raises(ValueError, match="init_weights='resnet20' names a released CIFAR ResNet"):
        ImageClassifier(tiny_backbone(), init_weights="resnet20")


@pytest.mark.parametrize("downsample", ["stride", "lps"])
def test_init_weights_fine_tunes_a_torchvision_backbone_from_its_plain_weights(tmp_path, downsample):
    """The plain network's state dict, saved to a file, is what the (antialiased) backbone starts from; an LPS
    network's scorers keep their initialization, every other weight is the file's."""
    torch.manual_seed(0)
    plain = build_backbone("torchvision:resnet18", 10)
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "plain.pt")
    model = ImageClassifier(
        "torchvision:resnet18",
        downsample=downsample,
        augmentation="none",
        image_size=16,
        lr=0.0,
        schedule="none",
        init_weights=str(tmp_path / "plain.pt"),
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    scorers = {k: v.clone() for k, v in model.backbone.state_dict().items() if ".scorer." in k}
    assert not torch.equal(model.backbone.fc.weight, plain.fc.weight)  # a fresh network until fit starts
    trainer(tmp_path, max_steps=1).fit(model, uint8_loader())
    for name, weight in plain.named_parameters():
        assert torch.equal(model.backbone.get_parameter(name), weight), name
    assert (downsample == "lps") == bool(scorers)
    for name, value in scorers.items():
        assert torch.equal(model.backbone.state_dict()[name], value), name


def test_init_weights_of_another_network_is_refused_naming_the_file(tmp_path):
    torch.save(build_backbone("torchvision:resnet18", 5).state_dict(), tmp_path / "five_classes.pt")
    model = ImageClassifier(
        "torchvision:resnet18",
        augmentation="none",
        image_size=16,
        init_weights=str(tmp_path / "five_classes.pt"),
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    with pytest.raises(ValueError, match="five_classes.pt' do not fit ResNet"):
        trainer(tmp_path, max_steps=1).fit(model, uint8_loader())


def test_a_released_model_name_is_found_beside_the_checkout_without_the_variable(tmp_path, monkeypatch):
    """The CLI's `fit` of a fine-tuning config on a machine with ../shared and no internet finds the same file as
    the recipes, with $INVARIANCE_SHARED_DIR unset."""
    beside = tmp_path / "shared"
    (beside / SHARED_WEIGHTS_SUBDIR).mkdir(parents=True)
    saved = cifar_resnet(20)
    torch.save(saved.state_dict(), beside / SHARED_WEIGHTS_SUBDIR / "resnet20-test.th")
    monkeypatch.delenv(SHARED_DIR_ENV, raising=False)
    monkeypatch.setattr(locations, "CHECKOUT_SHARED_DIR", beside)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.setenv("INVARIANCE_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: no download possible
    model = ImageClassifier(
        "cifar_resnet20", augmentation="none", image_size=16, lr=0.0, schedule="none", init_weights="resnet20"
    )
    trainer(tmp_path, max_steps=1).fit(model, uint8_loader())
    assert torch.equal(model.backbone.conv1.weight, saved.conv1.weight)
