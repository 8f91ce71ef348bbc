"""Tests of ``recipes/compare.py``: a tiny comparison on the shared CIFAR-10 checked against a hand-made evaluation,
train/resume/reuse on generated data (no ../shared needed), the config rewriting, the normalization of checkpoints
without mean/std, and bad input."""

from __future__ import annotations

import csv
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import write_random_cifar10

from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.checkpoint import load_classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "compare.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy_vs_flip_rate.png", "monitor_history.png", "shift_per_frame.png", "scale_per_frame.png")


@pytest.fixture(scope="module")
def recipe() -> SimpleNamespace:
    """The script's names (it is run as a script, not imported from the package)."""
    return SimpleNamespace(**runpy.run_path(str(RECIPE), run_name="compare_recipe"))


def read_rows(output: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (output / "comparison.csv").open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def hand_made_shift_metrics(checkpoint: Path, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, flip rate and MAC of the diagonal zero-fill shifts 0..8 px, computed directly from the model."""
    loaded = load_classifier(checkpoint)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in loaded.normalize)
    x = images.float() / 255
    probabilities = []
    with torch.no_grad():
        for k in range(9):
            shifted = torch.zeros_like(x)
            shifted[:, :, k:, k:] = x[:, :, : 32 - k, : 32 - k]
            probabilities.append(loaded.model((shifted - mean) / std).softmax(dim=1))
    p = torch.stack(probabilities, dim=1).double()  # (N, 9, C)
    top = p.argmax(dim=2)
    previous = top[:, :-1, None]
    change = (p[:, 1:].gather(2, previous) - p[:, :-1].gather(2, previous)).abs()
    return {
        "test_accuracy": float((top[:, 0] == labels).double().mean()),
        "shift_flip_rate": float((top[:, 1:] != top[:, :-1]).double().mean()),
        "shift_mac": float(change.mean()),
    }


@pytest.mark.shared_data
def test_tiny_comparison_on_shared_cifar10(recipe, cifar10_dir, tmp_path):
    output = tmp_path / "out"
    recipe.main(["--preset", "tiny", "--variants", "plain", "blur", "--no-wandb", "--data-dir", str(cifar10_dir),
                 "--output", str(output)])
    columns, rows = read_rows(output)
    assert columns == list(recipe.COLUMNS)
    assert [row["variant"] for row in rows] == ["plain", "blur"]
    for row in rows:
        assert row["epochs"] == "1" and row["test_images"] == "64" and row["training"] == "trained"
        assert row["preset"] == "tiny" and row["config"] == f"configs/cifar10/resnet20_{row['variant']}.yaml"
        for column in recipe.COLUMNS:
            if column.endswith(("accuracy", "flip_rate", "consistency", "mac")):
                assert 0.0 <= float(row[column]) <= 1.0, column  # NaN fails too: the monitor's values were read
        assert float(row["train_images_per_second"]) > 0
        assert row["command"].startswith("invariance-lightning fit --config ")
        assert "--trainer.max_epochs 1" in row["command"] and "--data.train_subset 128" in row["command"]

    plain = rows[0]
    datamodule = CIFARDataModule(data_dir=cifar10_dir, train_subset=128)
    datamodule.setup("test")
    images, labels = datamodule.split_arrays("test", 64, seed=0)
    expected = hand_made_shift_metrics(Path(plain["checkpoint"]), images, labels)
    for column, value in expected.items():
        assert float(plain[column]) == pytest.approx(value, abs=1e-6), column

    markdown = (output / "comparison.md").read_text()
    assert "SMOKE RUN" in markdown and "| plain |" in markdown and "| blur |" in markdown
    assert "python recipes/compare.py --preset tiny" in markdown
    for name in PLOTS:
        assert (output / name).read_bytes()[:8] == PNG_MAGIC, name


@pytest.fixture(scope="module")
def generated_cifar(tmp_path_factory) -> Path:
    """Random images in the shared .npz format; the configs hold out 5,000 training images for validation."""
    return write_random_cifar10(tmp_path_factory.mktemp("generated_cifar10"), train=5064, test=40)


def test_interrupted_run_is_resumed_then_reused_on_generated_data(recipe, generated_cifar, tmp_path, capsys,
                                                                   monkeypatch):
    output = tmp_path / "out"
    run_dir = output / "runs" / "cifar10" / "resnet20_plain"
    base = ["--preset", "tiny", "--variants", "plain", "--epochs", "2", "--train-subset", "64", "--test-images", "16",
            "--no-wandb", "--data-dir", str(generated_cifar), "--output", str(output), "--monitor-samples", "24"]

    def stop_after_this_epoch(module):  # as if the 2-epoch run were killed after its first epoch
        module.trainer.should_stop = True

    monkeypatch.setitem(recipe.main.__globals__, "write_plots", lambda *args: [])  # tested above; seconds per call
    with monkeypatch.context() as patch:
        patch.setattr(ImageClassifier, "on_train_epoch_end", stop_after_this_epoch)
        recipe.main(base)
    (row,) = read_rows(output)[1]
    assert (row["training"], row["epochs"], row["test_images"]) == ("trained", "1", "16")
    trained = yaml.safe_load((run_dir / "compare_config.yaml").read_text())
    assert recipe.find_callback(trained, "InvarianceMonitor")["init_args"]["num_samples"] == 24

    with pytest.raises(SystemExit) as stop:
        recipe.main(base)  # the run exists: no silent retraining
    assert stop.value.code == 2 and "--reuse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.main([*base[:5], "3", *base[6:], "--reuse"])  # a 2-epoch one-cycle schedule cannot become 3 epochs
    assert "planned for 2 epochs" in capsys.readouterr().err

    recipe.main([*base, "--reuse"])
    (row,) = read_rows(output)[1]
    assert (row["training"], row["epochs"]) == ("resumed", "2")
    steps = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert steps == 2 * 2  # 2 epochs of 64 images in batches of 32
    versions = sorted(run_dir.rglob("metrics.csv"))
    assert len(versions) == 2  # the resumed fit logged to a second version
    with versions[1].open(newline="") as file:
        second = list(csv.DictReader(file))
    measured = [r for r in second if r.get("invariance/val/shift/flip_rate")]
    assert [r["epoch"] for r in measured] == ["1"]
    logged = float(measured[0]["invariance/val/shift/flip_rate"])
    assert float(row["monitor_val_shift_flip_rate"]) == pytest.approx(logged)
    (speed,) = [float(r["train/images_per_second"]) for r in second if r.get("train/images_per_second")]
    assert float(row["train_images_per_second"]) == pytest.approx(speed)

    recipe.main([*base, "--reuse"])
    (row,) = read_rows(output)[1]
    assert (row["training"], row["epochs"]) == ("reused", "2")


def test_unknown_names_list_the_valid_ones(recipe, capsys):
    with pytest.raises(SystemExit) as stop:
        recipe.main(["--variants", "plain", "antialiased"])
    error = capsys.readouterr().err
    assert stop.value.code == 2
    assert "['antialiased']" in error and "valid variants" in error and "'augmented_blur'" in error
    with pytest.raises(SystemExit):
        recipe.main(["--family", "mnist"])
    error = capsys.readouterr().err
    assert "'mnist'" in error and "'cifar10'" in error and "'imagenette'" in error
    with pytest.raises(SystemExit):
        recipe.main(["--epochs", "0"])
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.main(["--monitor-samples", "-3"])
    assert "--monitor-samples must be at least 1, got -3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid families"):
        recipe.resolve_variants("mnist", None)
    assert list(recipe.resolve_variants("cifar10", None)) == list(recipe.MAIN_VARIANTS)
    assert set(recipe.resolve_variants("cifar10", ["all"])) >= {"consistency", "translate_scale"}


def test_config_copy_moves_the_run_directory_and_groups_wandb(recipe, tmp_path):
    source = yaml.safe_load((REPO_ROOT / "configs" / "cifar10" / "resnet20_aps.yaml").read_text())
    run_dir = tmp_path / "runs" / "cifar10" / "resnet20_aps"
    config = recipe.comparison_config(source, run_dir, recipe.PRESETS["quick"], "compare_x", "aps")
    assert config["trainer"]["default_root_dir"] == str(run_dir)
    assert recipe.checkpoint_path(config) == run_dir / "checkpoints" / "last.ckpt"
    wandb_logger, csv_logger = config["trainer"]["logger"]
    assert wandb_logger["init_args"] == {**wandb_logger["init_args"], "group": "compare_x", "name": "aps",
                                         "save_dir": str(run_dir)}
    assert csv_logger == {"class_path": recipe.CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}
    monitor = recipe.find_callback(config, "InvarianceMonitor")["init_args"]
    assert monitor == {**recipe.PRESETS["quick"].monitor, "batch_size": 256}
    assert source["trainer"]["default_root_dir"] == "runs/cifar10/resnet20_aps"  # the source is left alone
    assert "runs/cifar10" not in yaml.safe_dump(config).replace(str(run_dir), "")  # nothing left at the old place


def test_monitor_history_figure_draws_each_variants_values_per_epoch(recipe):
    histories = {
        "plain": [{"epoch": 0, "values": {"val/shift/flip_rate": 0.3, "train/shift/flip_rate": 0.2}},
                  {"epoch": 2, "values": {"val/shift/flip_rate": 0.1, "train/shift/flip_rate": 0.05}}],
        "blur": [{"epoch": 1, "values": {"val/shift/flip_rate": 0.25}}],  # no train split measured
        "none": [],  # a run without a monitor draws nothing
    }
    figure = recipe.monitor_history_figure(histories)
    train_ax, val_ax = figure.axes
    assert train_ax.get_title() == "monitor: train/shift/flip_rate" and val_ax.get_title().endswith("val/shift/flip_rate")
    assert [line.get_label() for line in train_ax.lines] == ["plain"]
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in val_ax.lines] == [
        ("plain", [0, 2], [0.3, 0.1]), ("blur", [1], [0.25])]
    assert recipe.last_monitored(histories["blur"])["val/shift/flip_rate"] == 0.25
    assert math.isnan(recipe.last_monitored(histories["blur"])["train/shift/flip_rate"])
    assert all(math.isnan(v) for v in recipe.last_monitored([]).values())


def test_last_logged_takes_the_latest_epoch_over_logger_versions(recipe, tmp_path):
    first, second = tmp_path / "version_0", tmp_path / "version_1"
    first.mkdir()
    second.mkdir()
    (first / "metrics.csv").write_text("epoch,step,a,b\n0,10,0.5,\n0,10,,7\n1,20,0.25,\n")
    (second / "metrics.csv").write_text("epoch,step,a,b\n2,30,0.125,\n")
    assert recipe.last_logged(tmp_path, ["a", "b"]) == {"a": 0.125, "b": 7.0}
    assert math.isnan(recipe.last_logged(tmp_path, ["c"])["c"])


def test_checkpoint_without_mean_std_is_evaluated_with_the_datamodule_statistics(recipe, tmp_path):
    import lightning

    from invariance_lightning import evaluate_invariance, sequence_preset
    from invariance_lightning.lightning.data import IMAGENET_STATS

    model = ImageClassifier("cifar_resnet20", augmentation="none")  # mean/std came from the datamodule
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, checkpoint)
    run = recipe.VariantRun("plain", RECIPE, {}, tmp_path / "c.yaml", tmp_path, checkpoint, 1, [])
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6)
    sequences = {"shift": sequence_preset("report")["shift"]}
    results = recipe.evaluate(run, images, labels, sequences, 64, IMAGENET_STATS)
    expected = evaluate_invariance(model.eval(), images, labels, sequences["shift"], normalize=IMAGENET_STATS)
    torch.testing.assert_close(results["shift"]["mac"], expected["mac"])
    assumed = load_classifier(checkpoint).normalize
    cifar = evaluate_invariance(model, images, labels, sequences["shift"], normalize=assumed)
    assert not torch.allclose(cifar["mac"], expected["mac"])  # load_classifier alone would assume CIFAR-10's


def test_imagenette_data_plumbing_on_generated_folders(recipe, tmp_path):
    from PIL import Image

    from invariance_lightning.lightning.data import IMAGENET_STATS

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "imagenette" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    argv = ["--family", "imagenette", "--data-dir", str(tmp_path / "imagenette")]
    args, _ = recipe.parse_args(recipe.build_parser(), argv)
    config = yaml.safe_load((REPO_ROOT / "configs" / "imagenette" / "resnet18_plain.yaml").read_text())
    preset = recipe.PRESETS["quick"]
    data = recipe.prepare_data(args, preset, config)
    assert data.preset.train_subset is None  # 6 training images < the preset's 2,000: all of them
    assert data.preset.test_images is None and "all test images" in recipe.describe(data.preset)  # 4 < 1,000
    assert data.overrides == {"root": str(tmp_path / "imagenette")}
    assert data.images.shape == (4, 3, 128, 128) and data.images.dtype == torch.uint8  # the whole val folder
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1]
    assert data.normalization == tuple(tuple(v) for v in IMAGENET_STATS)
