"""The invariance-lightning CLI: every config starts (fast_dev_run), W&B falls back to CSV, evaluate writes a report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import write_png

from conftest import write_random_cifar10
from invariance_lightning import evaluate_invariance, sequence_preset
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.lightning.cli import InvarianceCLI, main, run_cli, wandb_logged_in
from invariance_lightning.lightning.data import ImageFolderDataModule
from invariance_lightning.metrics.protocols import PROTOCOLS, evaluate_protocol
from invariance_lightning.models import cifar_resnet
from invariance_lightning.nn import APS2d, BlurPool2d, LPS2d, PolynomialActivation
from lightning_helpers import LargestImageBatch

REPO = Path(__file__).resolve().parents[1]
CIFAR_CONFIGS = sorted((REPO / "configs" / "cifar10").glob("*.yaml"))
IMAGENETTE_CONFIGS = sorted((REPO / "configs" / "imagenette").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_cifar_dir(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 in the shared .npz format, so that the CLI runs without ../shared."""
    return write_random_cifar10(tmp_path_factory.mktemp("cifar10"), train=64, test=32)


def test_configs_exist_for_every_variant():
    assert {p.stem for p in CIFAR_CONFIGS} == {
        f"resnet20_{v}"
        for v in (
            "plain",
            "augmented",
            "translate_scale",
            "blur",
            "aps",
            "augmented_blur",
            "consistency",
            "augmented_aps",
            "augmented_lps",
            "augmented_afc",
            "augmented_blur_consistency",
            "finetuned_blur_consistency",
            "finetuned_blur_consistency_8px",
            "finetuned_blur_consistency_8px_pairs",
        )
    }
    for path in CIFAR_CONFIGS:  # each name says what its model section sets
        model, parts = yaml.safe_load(path.read_text())["model"], path.stem.split("_")[1:]
        assert (model["augmentation"] != "none") == bool({"augmented", "consistency", "translate"} & set(parts)), path
        assert model["downsample"] == next((p for p in ("blur", "aps", "lps", "afc") if p in parts), "stride"), path
        assert (model["consistency_weight"] > 0) == ("consistency" in parts), path
        assert ("init_weights" in model) == ("finetuned" in parts), path
        assert model.get("max_shift", 4) == (8 if "8px" in parts else 4), path  # the crops' black border
        assert model.get("consistency_max_shift", 1) == (8 if "pairs" in parts else 1), path  # the penalty's pairs
    assert {p.stem for p in IMAGENETTE_CONFIGS} == {
        f"resnet18_{v}" for v in ("plain", "augmented", "blur", "aps", "augmented_blur")
    }
    for path in CIFAR_CONFIGS + IMAGENETTE_CONFIGS:
        config = yaml.safe_load(path.read_text())
        callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
        assert "invariance_lightning.lightning.callbacks.InvarianceMonitor" in callbacks, path
        assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger"), path


def check_fast_dev_run(cli: InvarianceCLI, config: Path) -> None:
    """One training step ran with the model the config's name describes, and the monitor measured it."""
    trainer, model = cli.trainer, cli.model
    assert trainer.global_step == 1 and trainer.fast_dev_run
    settings = yaml.safe_load(config.read_text())["model"]
    modules = list(model.backbone.modules())
    # a low-pass filter before subsampling (APS samples after one too, as the configs set it; the strided network
    # subsamples its shortcuts with a BlurPool2d of filter size 1, no filter)
    low_pass = any(isinstance(m, BlurPool2d) and m.filter_size > 1 for m in modules)
    assert low_pass == (settings.get("downsample") in ("blur", "aps", "lps")), config.stem
    assert any(isinstance(m, APS2d) for m in modules) == (settings.get("downsample") == "aps"), config.stem
    assert any(isinstance(m, LPS2d) for m in modules) == (settings.get("downsample") == "lps"), config.stem
    alias_free = any(isinstance(m, PolynomialActivation) for m in modules)
    assert alias_free == (settings.get("downsample") == "afc") and not (alias_free and low_pass), config.stem
    metrics = trainer.callback_metrics
    assert ("train/consistency_penalty" in metrics) == (settings.get("consistency_weight", 0) > 0), config.stem
    assert ("train/lps_temperature" in metrics) == (settings.get("downsample") == "lps"), config.stem  # annealed
    for split in ("train", "val"):
        flip_rate = float(metrics[f"invariance/{split}/shift/flip_rate"])
        # after one step an alias-free network's eval-mode batch norm holds one batch's statistics and its squares
        # overflow: the monitor logs NaN (docs/models.md)
        assert 0 <= flip_rate <= 1 or (alias_free and math.isnan(flip_rate)), config.stem


@pytest.mark.slow
@pytest.mark.parametrize("config", CIFAR_CONFIGS, ids=lambda p: p.stem)
def test_every_cifar_config_trains_the_model_it_names_and_measures_it(config, tiny_cifar_dir, tmp_path):
    weights = []
    if "init_weights" in yaml.safe_load(config.read_text())["model"]:  # fine-tuning: random weights stand in
        saved = cifar_resnet(20).state_dict()
        torch.save(saved, tmp_path / "resnet20.pt")
        weights = ["--model.init_weights", str(tmp_path / "resnet20.pt")]
    cli = run_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--no_wandb",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.data_dir",
            str(tiny_cifar_dir),
            "--data.val_split",
            "16",
            "--data.batch_size",
            "16",
            "--trainer.enable_progress_bar",
            "false",
            *weights,
        ]
    )
    check_fast_dev_run(cli, config)
    if weights:  # fine-tuning started from the given weights: one small step away from them
        trained = cli.model.backbone.conv1.weight.detach()
        assert torch.allclose(trained, saved["conv1.weight"], atol=1e-2)
        assert not torch.allclose(cifar_resnet(20).conv1.weight, saved["conv1.weight"], atol=1e-2)


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("config", IMAGENETTE_CONFIGS, ids=lambda p: p.stem)
def test_every_imagenette_config_trains_the_model_it_names_and_measures_it(config, imagenette_dir, tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--no_wandb",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.root",
            str(imagenette_dir),
            "--data.batch_size",
            "4",
            "--data.num_workers",
            "0",
            "--data.image_size",
            "64",
            "--model.image_size",
            "64",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    check_fast_dev_run(cli, config)


def test_no_wandb_switch_logs_to_csv(tiny_cifar_dir, tmp_path):
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "cifar10" / "resnet20_plain.yaml"),
            "--no_wandb",
            "true",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.data_dir",
            str(tiny_cifar_dir),
            "--data.val_split",
            "16",
            "--data.batch_size",
            "16",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics, "a CSVLogger must replace the WandbLogger"
    header = metrics[0].read_text().splitlines()[0]
    assert "invariance/val/shift/flip_rate" in header and "val/acc" in header
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_run_directory_is_produced(tiny_cifar_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_root = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "cifar10" / "resnet20_plain.yaml"),  # fast_dev_run drops loggers
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(run_root),
            "--trainer.logger.init_args.save_dir",
            str(run_root),
            "--trainer.logger.init_args.mode",
            "offline",
            "--data.data_dir",
            str(tiny_cifar_dir),
            "--data.val_split",
            "16",
            "--data.batch_size",
            "16",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert list(run_root.glob("wandb/offline-run-*/*.wandb")), "an offline W&B run must be written"


def test_evaluate_writes_a_report_for_pretrained_weights(tiny_cifar_dir, tmp_path):
    weights = tmp_path / "resnet20-test.th"
    torch.save({"state_dict": cifar_resnet(20).state_dict()}, weights)
    output = tmp_path / "report"
    main(
        [
            "evaluate",
            "--model",
            str(weights),
            "--data_dir",
            str(tiny_cifar_dir),
            "--preset",
            "monitor",
            "--num_images",
            "12",
            "--output",
            str(output),
        ]
    )
    report = json.loads((output / "report.json").read_text())
    assert report["num_images"] == 12 and set(report["results"]) == {"shift", "scale"}
    assert 0.0 <= report["results"]["shift"]["metrics"]["flip_rate"] <= 1.0
    assert "| shift |" in (output / "report.md").read_text()
    assert (output / "shift_per_frame.png").exists()


def test_evaluate_takes_a_released_model_by_name_from_the_shared_folder(tiny_cifar_dir, tmp_path, monkeypatch):
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    (shared / "weights" / "cifar10-resnet").mkdir(parents=True)
    torch.manual_seed(0)
    weights = shared / "weights" / "cifar10-resnet" / "resnet20-test.th"
    torch.save({"state_dict": cifar_resnet(20).state_dict()}, weights)
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # no cached release can stand in for the shared file
    common = ["--data_dir", str(tiny_cifar_dir), "--preset", "monitor", "--num_images", "12"]
    main(["evaluate", "--model", "resnet20", "--no-download", *common, "--output", str(tmp_path / "by_name")])
    main(["evaluate", "--model", str(weights), *common, "--output", str(tmp_path / "by_file")])
    by_name = json.loads((tmp_path / "by_name" / "report.json").read_text())
    by_file = json.loads((tmp_path / "by_file" / "report.json").read_text())
    assert by_name["results"] == by_file["results"]  # the very file, not another model of that name
    assert "resnet20" in (tmp_path / "by_name" / "report.md").read_text()
    # a name with no local copy and no download allowed: the refusal says where it looked
    with pytest.raises(FileNotFoundError, match=r"resnet56.*downloading is disabled"):
        main(["evaluate", "--model", "resnet56", "--no-download", *common, "--output", str(tmp_path / "none")])


def test_evaluate_streams_the_split_and_never_builds_a_tensor_of_its_size(tmp_path, capsys):
    root = tmp_path / "folder"
    generator = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 2), ("val", 10)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
                write_png(image, str(root / split / label / f"{i}.png"))
    weights = tmp_path / "resnet20-test.th"
    network = cifar_resnet(20)
    for module in network.modules():  # random BatchNorm affines: predictions that differ between shifts
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.normal_(0, 1, generator=generator)
            module.bias.data.normal_(0, 1, generator=generator)
    torch.save({"state_dict": network.state_dict()}, weights)
    output = tmp_path / "report"
    args = ["evaluate", "--model", str(weights), "--data", str(root), "--image_size", "32", "--preset", "monitor"]
    protocols = ["zhang2019", "imagenet_p_flip"]
    with LargestImageBatch(32, 32) as tracker:
        main([*args, "--batch_size", "8", "--output", str(output), "--protocols", *protocols, "--seed", "5"])
    assert tracker.largest <= 8, f"an image tensor of {tracker.largest} images was built for a 20-image split"

    report = json.loads((output / "report.json").read_text())
    assert report["num_images"] == 20
    datamodule = ImageFolderDataModule(root, image_size=32, test_dir="val", num_workers=0)
    datamodule.setup("test")
    images, targets = datamodule.split_arrays("test")
    loaded = load_classifier(weights)
    for name, sequence in sequence_preset("monitor").items():
        expected = evaluate_invariance(loaded.model, images, targets, sequence, normalize=loaded.normalize)
        for metric in ("flip_rate", "consistency", "accuracy", "worst_case_accuracy"):
            logged = report["results"][name]["metrics"][metric]
            assert logged == pytest.approx(float(expected[metric]), abs=1e-6), (name, metric)
    # the protocols' counts, summed over the three streamed batches (8, 8, 4 images), equal one call on all 20
    for name in protocols:
        expected = evaluate_protocol(loaded.model, images, targets, name, normalize=loaded.normalize, seed=5)
        assert report["protocols"][name]["results"] == expected, name
        assert report["protocols"][name]["citation"] == PROTOCOLS[name].citation
    assert 0 < report["protocols"]["zhang2019"]["results"]["consistency"] < 1
    assert "## Published protocols" in (output / "report.md").read_text()
    assert (
        f"| imagenet_p_flip | 20 | flip_probability {expected['flip_probability']:.4f}"
        in (output / "report.md").read_text()
    )
    with pytest.raises(SystemExit):
        main([*args, "--protocols", "zhang2020"])
    assert "invalid choice: 'zhang2020' (choose from 'zhang2019', 'aps2021_standard'" in capsys.readouterr().err


def test_evaluate_normalizes_a_checkpoint_as_it_recorded_else_with_the_data_statistics(tmp_path):
    import lightning
    import numpy as np

    from invariance_lightning.lightning.data import CIFAR_STATS
    from invariance_lightning.lightning.module import ImageClassifier

    rng = np.random.default_rng(1)
    for split in ("train", "test"):  # CIFAR-100, whose statistics are neither CIFAR-10's nor ImageNet's
        np.savez(
            tmp_path / f"cifar100_{split}.npz",
            images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
            labels=rng.integers(0, 100, 8),
        )
    model = ImageClassifier("cifar_resnet20", num_classes=100, augmentation="none")
    recorded = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)
    for name, extra in (("old", {}), ("new", {"input_normalization": recorded})):
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "epoch": 0,
                "pytorch-lightning_version": lightning.__version__,
                **extra,
            },
            tmp_path / f"{name}.ckpt",
        )
    images = torch.from_numpy(np.load(tmp_path / "cifar100_test.npz")["images"]).permute(0, 3, 1, 2)
    sequence = sequence_preset("monitor")["shift"]
    for name, normalize in (("old", CIFAR_STATS["cifar100"]), ("new", recorded)):
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / f"{name}.ckpt"),
                "--data",
                "cifar100",
                "--data_dir",
                str(tmp_path),
                "--preset",
                "monitor",
                "--output",
                str(tmp_path / name),
            ]
        )
        report = json.loads((tmp_path / name / "report.json").read_text())
        expected = evaluate_invariance(model, images, None, sequence, normalize=normalize)
        assert report["results"]["shift"]["metrics"]["mac"] == pytest.approx(float(expected["mac"]), abs=1e-6), name


def test_wandb_login_detection_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()
