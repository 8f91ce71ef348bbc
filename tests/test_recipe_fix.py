"""recipes/fix.py: measure a checkpoint, convert and fine-tune it, measure again (generated data, a tiny run)."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_random_cifar10
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.lightning.data import CIFARDataModule, ImageFolderDataModule
from invariance_lightning.lightning.fixing import FixSettings
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.nn import BlurPool2d, LPS2d, PolynomialActivation
from invariance_lightning.transforms import sequence_preset
from invariance_lightning.transforms.functional import shift
from invariance_lightning.transforms.normalization import normalize_images
from lightning_helpers import train_classifier_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Generated CIFAR-10 files and an ImageClassifier checkpoint after a few SGD steps."""
    folder = write_random_cifar10(tmp_path_factory.mktemp("fix"), train=64, test=16)
    return folder, train_classifier_checkpoint(folder, folder / "model.ckpt", steps=4)


@pytest.fixture(scope="module")
def fixed(trained, tmp_path_factory) -> Path:
    folder, checkpoint = trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    output = tmp_path_factory.mktemp("fixed")
    summary = main(
        [
            "--model",
            str(checkpoint),
            "--epochs",
            "1",
            "--val_split",
            "8",
            "--data_dir",
            str(folder),
            "--no-download",
            "--batch_size",
            "16",
            "--test_images",
            "12",
            "--consistency_kind",
            "js",
            "--consistency_max_shift",
            "3",
            "--filter_size",
            "5",
            "--output",
            str(output),
        ]
    )
    assert summary == output / "summary.md"
    return output


def test_the_before_numbers_are_those_of_the_given_checkpoint(trained, fixed):
    folder, checkpoint = trained
    loaded = load_classifier(checkpoint)
    images, labels = CIFARDataModule(data_dir=folder, download=False, val_split=8).split_arrays("test", 12, seed=0)
    expected = evaluate_sequences(loaded.model, images, labels, sequence_preset("report"), normalize=loaded.normalize)
    before = json.loads((fixed / "before.json").read_text())["results"]
    for name, metrics in expected.items():
        assert before[name]["metrics"]["flip_rate"] == pytest.approx(float(metrics["flip_rate"]), abs=1e-6)
        assert before[name]["metrics"]["accuracy"] == pytest.approx(float(metrics["accuracy"]), abs=1e-6)


def test_the_after_numbers_are_those_of_the_fine_tuned_antialiased_network(trained, fixed):
    folder, _ = trained
    loaded = load_classifier(fixed / "checkpoints" / "last.ckpt")
    blurs = [m for m in loaded.model.modules() if isinstance(m, BlurPool2d)]
    assert blurs and all(m.filter_size == 5 for m in blurs)  # converted, with the --filter_size asked for
    images, labels = CIFARDataModule(data_dir=folder, download=False, val_split=8).split_arrays("test", 12, seed=0)
    expected = evaluate_sequences(loaded.model, images, labels, sequence_preset("report"), normalize=loaded.normalize)
    after = json.loads((fixed / "after.json").read_text())
    assert after["training"]["epochs"] == 1 and after["training"]["minutes"] > 0 and after["filter_size"] == 5
    for name, metrics in expected.items():
        assert after["results"][name]["metrics"]["flip_rate"] == pytest.approx(float(metrics["flip_rate"]), abs=1e-6)
    assert "aps2021_standard" in after["protocols"]


def test_the_consistency_options_reach_the_fine_tuned_classifier(fixed):
    hparams = torch.load(fixed / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    settings = (hparams["consistency_kind"], hparams["consistency_max_shift"], hparams["consistency_weight"])
    assert settings == ("js", 3, 2)
    after = json.loads((fixed / "after.json").read_text())
    assert after["training"]["consistency"] == {"weight": 2.0, "kind": "js", "max_shift": 3}
    assert "js consistency of weight 2.0 against a further shift of up to 3 px" in (fixed / "summary.md").read_text()


def test_the_summary_puts_each_sequence_before_and_after_side_by_side(fixed):
    summary = (fixed / "summary.md").read_text()
    for name in sequence_preset("report"):
        assert f"| {name} (before) |" in summary and f"| {name} (after) |" in summary
    assert "python recipes/fix.py --model" in summary and "(before.md)" in summary
    assert (
        (fixed / "after.md")
        .read_text()
        .startswith("# After fine-tuning: model converted (blur, filter 5) and fine-tuned on")
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "median"}, "method must be one of"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"protocols": ("zhang2020",)}, "unknown protocol 'zhang2020'"),
        ({"consistency_kind": "kl"}, "consistency_kind must be one of"),
        ({"consistency_max_shift": 0}, "consistency_max_shift must be an int >= 1"),
        ({"filter_size": 8}, "filter_size must be None or an int in"),
        ({"method": "afc", "filter_size": 3}, "filter_size has no effect with method 'afc'"),
        ({"padding_mode": "reflect"}, "padding_mode must be one of"),
    ],
)
def test_settings_refuse_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FixSettings(**kwargs)


def test_a_rerun_resumes_from_the_last_checkpoint_and_other_settings_are_refused(trained, tmp_path):
    folder, checkpoint = trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    common = ["--model", str(checkpoint), "--epochs", "1", "--val_split", "8", "--data_dir", str(folder)]
    common += ["--no-download", "--batch_size", "32", "--test_images", "4", "--output", str(tmp_path)]
    main(common)
    trained_once = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    main(common)  # as after an interruption: the run continues from last.ckpt, here with nothing left to train
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == trained_once
    rerun_log = tmp_path / "logs" / "version_1" / "metrics.csv"
    assert not rerun_log.exists(), "the rerun trained again"
    assert json.loads((tmp_path / "after.json").read_text())["training"]["resumed"] is True
    with pytest.raises(ValueError, match=r"holds a fine-tuning run with other settings \(consistency_weight, epochs\)"):
        main([*common[:-2], "--output", str(tmp_path), "--consistency_weight", "3", "--epochs", "2"])


def test_an_alias_free_fine_tuning_replaces_the_activations_and_reports_the_network_it_trained(trained, tmp_path):
    folder, checkpoint = trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    argv = [
        "--model",
        str(checkpoint),
        "--method",
        "afc",
        "--epochs",
        "1",
        "--val_split",
        "8",
        "--data_dir",
        str(folder),
    ]
    main([*argv, "--no-download", "--batch_size", "32", "--test_images", "4", "--output", str(tmp_path)])
    loaded = load_classifier(tmp_path / "checkpoints" / "last.ckpt")
    modules = list(loaded.model.modules())
    assert any(isinstance(m, PolynomialActivation) for m in modules)
    assert not any(isinstance(m, torch.nn.ReLU) for m in modules)
    images, labels = CIFARDataModule(data_dir=folder, download=False, val_split=8).split_arrays("test", 4, seed=0)
    expected = evaluate_sequences(loaded.model, images, labels, sequence_preset("report"), normalize=loaded.normalize)
    after = json.loads((tmp_path / "after.json").read_text())["results"]
    assert after["shift"]["metrics"]["flip_rate"] == pytest.approx(float(expected["shift"]["flip_rate"]), abs=1e-6)


def test_an_lps_fine_tuning_anneals_the_gumbel_temperature(trained, tmp_path):
    folder, checkpoint = trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    argv = [
        "--model",
        str(checkpoint),
        "--method",
        "lps",
        "--epochs",
        "2",
        "--val_split",
        "8",
        "--data_dir",
        str(folder),
    ]
    main([*argv, "--no-download", "--batch_size", "32", "--test_images", "4", "--output", str(tmp_path)])
    loaded = load_classifier(tmp_path / "checkpoints" / "last.ckpt")
    temperatures = [float(m.temperature) for m in loaded.model.modules() if isinstance(m, LPS2d)]
    assert temperatures and temperatures == pytest.approx([0.1] * len(temperatures))  # the schedule's end


def test_a_circular_aps_fine_tuning_sees_a_zero_filled_shift_only_as_the_content_it_pushes_out(trained, tmp_path):
    """With circular padding the APS network is exactly invariant to torch.roll, and a zero-filled shift by (s, s) is
    the roll of the image with its last s rows and columns blacked out: the fine-tuned network must give both the same
    logits (with zero padding it does not)."""
    folder, checkpoint = trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    common = ["--model", str(checkpoint), "--method", "aps", "--epochs", "1", "--val_split", "8", "--data_dir"]
    common += [str(folder), "--no-download", "--batch_size", "32", "--test_images", "4"]
    images, _ = CIFARDataModule(data_dir=folder, download=False, val_split=8).split_arrays("test", 4, seed=0)
    images = images.float() / 255
    for padding_mode in ("circular", "zeros"):
        output = tmp_path / padding_mode
        main([*common, "--padding_mode", padding_mode, "--output", str(output)])
        loaded = load_classifier(output / "checkpoints" / "last.ckpt")
        model = loaded.model.eval()
        max_difference = 0.0
        with torch.no_grad():
            for s in (1, 3, 6):
                blacked_out = images.clone()
                blacked_out[..., 32 - s :, :] = 0
                blacked_out[..., :, 32 - s :] = 0
                shifted = shift(images, s, s, "zeros")
                difference = model(normalize_images(shifted, loaded.normalize)) - model(
                    normalize_images(blacked_out, loaded.normalize)
                )
                max_difference = max(max_difference, float(difference.abs().max()))
        after = json.loads((output / "after.json").read_text())
        assert after["padding_mode"] == padding_mode
        if padding_mode == "circular":
            assert max_difference < 1e-4
            assert "aps, filter 3, circular padding" in (output / "summary.md").read_text()
        else:
            assert max_difference > 1e-3


def write_image_folder(root: Path, per_class: int, seed: int) -> None:
    """Three classes of 32x32 PNG noise images under ``root``."""
    generator = np.random.default_rng(seed)
    for label in range(3):
        folder = root / f"n0{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{index:02d}.png")


def train_folder_checkpoint(root: Path, path: Path, test_dir: str | None = "val") -> Path:
    """A torchvision ResNet-18 ``ImageClassifier`` trained 3 steps on an ``ImageFolderDataModule``, saved to ``path``."""
    torch.manual_seed(0)
    datamodule = ImageFolderDataModule(str(root), image_size=32, batch_size=8, num_workers=0, test_dir=test_dir)
    model = ImageClassifier("torchvision:resnet18", num_classes=3, image_size=32, augmentation="none", lr=0.05)
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)  # as LightningCLI saves it: with the datamodule's class path
    saved["datamodule_hyper_parameters"].update(
        _class_path="invariance_lightning.lightning.data.ImageFolderDataModule",
        _instantiator="lightning.pytorch.cli.instantiate_module",
    )
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def folder_trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folder") / "tiny-folder"
    write_image_folder(root / "train", per_class=8, seed=0)
    write_image_folder(root / "val", per_class=4, seed=1)
    return root, train_folder_checkpoint(root, root.parent / "resnet18.ckpt")


def test_a_torchvision_model_is_converted_and_fine_tuned_on_its_own_image_folder(folder_trained, tmp_path):
    """Issue 24, item 1: any ImageClassifier checkpoint of a torchvision backbone with its ImageFolderDataModule."""
    root, checkpoint = folder_trained
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    argv = ["--model", str(checkpoint), "--epochs", "1", "--lr", "1e-9", "--batch_size", "8", "--test_images", "6"]
    main([*argv, "--protocols", "aps2021_standard", "--output", str(tmp_path)])
    before, after = load_classifier(checkpoint).model, load_classifier(tmp_path / "checkpoints" / "last.ckpt").model
    assert after.hparams.backbone == "torchvision:resnet18" and after.hparams.num_classes == 3
    assert any(isinstance(m, BlurPool2d) for m in after.backbone.modules())  # converted
    assert not any(isinstance(m, BlurPool2d) for m in before.backbone.modules())
    for name, weight in before.backbone.named_parameters():  # started from the checkpoint's weights (lr ~ 0)
        assert torch.allclose(after.backbone.get_parameter(name), weight, atol=1e-6), name
    report = json.loads((tmp_path / "after.json").read_text())
    assert report["training"]["train_images"] == 24 and report["test_images"] == 6  # its folder's splits
    assert "on 6 tiny-folder test images" in (tmp_path / "after.md").read_text()
    datamodule = ImageFolderDataModule(root, image_size=32, batch_size=8, num_workers=0, test_dir="val")
    images, labels = datamodule.split_arrays("test", 6, seed=0)
    loaded = load_classifier(tmp_path / "checkpoints" / "last.ckpt")
    expected = evaluate_sequences(loaded.model, images, labels, sequence_preset("report"), normalize=loaded.normalize)
    measured = report["results"]["shift"]["metrics"]["flip_rate"]
    assert measured == pytest.approx(float(expected["shift"]["flip_rate"]), abs=1e-6)


def test_a_folder_model_without_a_test_split_is_refused_before_anything_runs(folder_trained, tmp_path):
    root, _ = folder_trained
    checkpoint = train_folder_checkpoint(root, tmp_path / "no_test.ckpt", test_dir=None)
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    with pytest.raises(ValueError, match=r"has no test split \(test_dir=None\)"):
        main(["--model", str(checkpoint), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_cifar100_checkpoint_is_fine_tuned_and_measured_on_cifar100(tmp_path):
    folder = write_random_cifar10(tmp_path, train=48, test=8, name="cifar100", classes=100)
    torch.manual_seed(0)
    datamodule = CIFARDataModule(name="cifar100", data_dir=str(folder), download=False, val_split=8, batch_size=16)
    model = ImageClassifier("cifar_resnet20", num_classes=100, augmentation="none", lr=0.05)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "cifar100.ckpt")
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    argv = ["--model", str(tmp_path / "cifar100.ckpt"), "--epochs", "1", "--val_split", "8", "--data_dir", str(folder)]
    main([*argv, "--no-download", "--batch_size", "16", "--test_images", "4", "--output", str(tmp_path / "out")])
    after = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["hyper_parameters"]["num_classes"] == 100
    assert after["datamodule_hyper_parameters"]["name"] == "cifar100"
    assert "on 4 CIFAR-100 test images" in (tmp_path / "out" / "after.md").read_text()


def test_data_dir_points_an_image_folder_model_at_its_moved_data(folder_trained, tmp_path):
    root, checkpoint = folder_trained
    moved = shutil.copytree(root, tmp_path / "moved")
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "fix.py"), run_name="fix_recipe")["main"]
    argv = ["--model", str(checkpoint), "--data_dir", str(moved), "--epochs", "1", "--batch_size", "8"]
    main([*argv, "--test_images", "3", "--train_subset", "12", "--output", str(tmp_path / "out")])
    saved = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["datamodule_hyper_parameters"]["root"] == str(moved)
    assert saved["datamodule_hyper_parameters"]["train_subset"] == 12
    assert json.loads((tmp_path / "out" / "after.json").read_text())["training"]["train_images"] == 12
