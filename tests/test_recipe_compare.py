"""The comparison of config variants (``invariance_lightning.lightning.comparison``, the engine of
``recipes/compare.py``): a tiny comparison on the shared CIFAR-10 checked against a hand-made evaluation, the recipe
end to end (train, refuse, resume, reuse) on generated data (no ../shared needed), the config rewriting, what a run
recorded, the data plumbing and bad input."""

from __future__ import annotations

import csv
import json
import math
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import write_random_cifar10
from invariance_lightning import locations
from invariance_lightning.lightning import comparison
from invariance_lightning.lightning.checkpoint import load_classifier, read_checkpoint
from invariance_lightning.lightning.cli import CSV_LOGGER
from invariance_lightning.lightning.comparison import (
    COMPARISON_PRESETS,
    MAIN_VARIANTS,
    ComparisonSettings,
    plan_comparison,
    run_comparison,
)
from invariance_lightning.lightning.comparison import run as comparison_run
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.models.pretrained import DownloadError
from invariance_lightning.reporting.comparison import COMPARISON_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy_vs_flip_rate.png", "monitor_history.png", "shift_per_frame.png", "scale_per_frame.png")


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
def test_tiny_comparison_on_shared_cifar10(cifar10_dir, tmp_path):
    output = tmp_path / "out"
    settings = ComparisonSettings(REPO_ROOT, variants=["plain", "blur"], preset="tiny", no_wandb=True,
                                  data_dir=cifar10_dir, output=output,
                                  command="python recipes/compare.py --preset tiny")
    report = run_comparison(plan_comparison(settings))
    assert report == output / "comparison.md"
    columns, rows = read_rows(output)
    assert columns == list(COMPARISON_COLUMNS)
    assert [row["variant"] for row in rows] == ["plain", "blur"]
    for row in rows:
        assert row["epochs"] == "1" and row["test_images"] == "64" and row["training"] == "trained"
        assert row["preset"] == "tiny" and row["config"] == f"configs/cifar10/resnet20_{row['variant']}.yaml"
        for column in COMPARISON_COLUMNS:
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

    markdown = report.read_text()
    assert "SMOKE RUN" in markdown and "| plain |" in markdown and "| blur |" in markdown
    assert "python recipes/compare.py --preset tiny" in markdown
    for name in PLOTS:
        assert (output / name).read_bytes()[:8] == PNG_MAGIC, name


@pytest.fixture(scope="module")
def generated_cifar(tmp_path_factory) -> Path:
    """Random images in the shared .npz format; the configs hold out 5,000 training images for validation."""
    return write_random_cifar10(tmp_path_factory.mktemp("generated_cifar10"), train=5064, test=40)


def test_recipe_end_to_end_trains_refuses_resumes_and_reuses_on_generated_data(generated_cifar, tmp_path, capsys,
                                                                              monkeypatch):
    recipe = runpy.run_path(str(REPO_ROOT / "recipes" / "compare.py"), run_name="compare_recipe")
    output = tmp_path / "out"
    run_dir = output / "runs" / "cifar10" / "resnet20_plain"
    base = ["--preset", "tiny", "--variants", "plain", "--epochs", "2", "--train-subset", "64", "--test-images", "16",
            "--no-wandb", "--data-dir", str(generated_cifar), "--output", str(output), "--monitor-samples", "24",
            "--protocols", "aps2021_circular", "--seed", "3"]

    def stop_after_this_epoch(module):  # as if the 2-epoch run were killed after its first epoch
        module.trainer.should_stop = True

    monkeypatch.setattr(comparison_run, "save_figures", lambda *args: [])  # tested above; seconds per call
    with monkeypatch.context() as patch:
        patch.setattr(ImageClassifier, "on_train_epoch_end", stop_after_this_epoch)
        assert recipe["main"](base) == output / "comparison.md"
    (row,) = read_rows(output)[1]
    assert (row["training"], row["epochs"], row["test_images"]) == ("trained", "1", "16")
    trained = yaml.safe_load((run_dir / "compare_config.yaml").read_text())
    assert comparison.find_callback(trained, "InvarianceMonitor")["init_args"]["num_samples"] == 24

    with pytest.raises(SystemExit) as stop:
        recipe["main"](base)  # the run exists: no silent retraining
    assert stop.value.code == 2 and "--reuse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe["main"]([*base[:5], "3", *base[6:], "--reuse"])  # a 2-epoch one-cycle schedule cannot become 3 epochs
    assert "planned for 2 epochs" in capsys.readouterr().err

    recipe["main"]([*base, "--reuse"])
    (row,) = read_rows(output)[1]
    assert (row["training"], row["epochs"]) == ("resumed", "2")
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt").global_step == 2 * 2  # 2 epochs of 2 batches
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

    comparison.record_path(output, "plain").unlink()  # else the record of this checkpoint stands for it (below)
    recipe["main"]([*base, "--reuse"])
    columns, (row,) = read_rows(output)
    assert (row["training"], row["epochs"]) == ("reused", "2")
    # one column per published-protocol number, equal to the protocol on the same (seeded) test images
    at = columns.index("monitor_train_shift_flip_rate")
    assert columns[at - 2 : at] == ["aps2021_circular_consistency", "aps2021_circular_accuracy"]
    images, labels = CIFARDataModule(data_dir=generated_cifar).split_arrays("test", 16, seed=3)
    loaded = load_classifier(run_dir / "checkpoints" / "last.ckpt")
    expected = evaluate_protocol(loaded.model, images, labels, "aps2021_circular", normalize=loaded.normalize, seed=3)
    for number in ("consistency", "accuracy"):
        assert float(row[f"aps2021_circular_{number}"]) == expected[number], number
    assert " aps2021_circular_consistency |" in (output / "comparison.md").read_text()

    # the variant's record: the row, the monitor history and the per-epoch log, enough to rebuild the table
    record = json.loads(comparison.record_path(output, "plain").read_text())
    assert [entry["epoch"] for entry in record["log"]] == [0.0, 1.0]
    assert record["log"][1]["train/images_per_second"] == pytest.approx(speed)
    assert [entry["epoch"] for entry in record["history"]] == [0, 1]
    before = read_rows(output), json.loads((output / "comparison.json").read_text())["results"]
    for remove_run in (False, True):  # the same checkpoint, then none left (a fresh clone): the record stands for it
        if remove_run:
            shutil.rmtree(run_dir)
        recipe["main"]([*base, "--reuse"])
        rebuilt = json.loads((output / "comparison.json").read_text())
        assert (read_rows(output), rebuilt["results"]) == before
        assert rebuilt["setup"]["actions"] == {"plain": "recorded"}
    other_seed = ComparisonSettings(REPO_ROOT, variants=["plain"], preset="tiny", epochs=2, train_subset=64,
                                    test_images=16, no_wandb=True, data_dir=generated_cifar, output=output,
                                    protocols=["aps2021_circular"], seed=4, reuse=True)
    assert plan_comparison(other_seed).actions == {"plain": "trained"}  # made with other settings: not used

    for argv, message in ((["--variants", "plain", "antialiased"], "valid variants"),
                          (["--family", "mnist"], "'imagenette'"),
                          (["--monitor-samples", "-3"], "argument --monitor-samples: must be an int >= 1, got '-3'")):
        with pytest.raises(SystemExit) as stop:
            recipe["main"](argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['antialiased'\] for family 'cifar10'; valid variants: .*'augmented_blur'"):
        comparison.resolve_variants(REPO_ROOT, "cifar10", ["plain", "antialiased"])
    with pytest.raises(ValueError, match=r"unknown family 'mnist'; valid families: \['cifar10', 'imagenette'\]"):
        comparison.resolve_variants(REPO_ROOT, "mnist", None)
    with pytest.raises(ValueError, match="names a variant twice"):
        comparison.resolve_variants(REPO_ROOT, "cifar10", ["plain", "plain"])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        plan_comparison(ComparisonSettings(REPO_ROOT, preset="huge"))
    assert list(comparison.resolve_variants(REPO_ROOT, "cifar10", None)) == list(MAIN_VARIANTS)
    assert set(comparison.resolve_variants(REPO_ROOT, "cifar10", ["all"])) >= {"consistency", "translate_scale"}


def test_config_copy_moves_the_run_directory_and_groups_wandb(tmp_path):
    source = yaml.safe_load((REPO_ROOT / "configs" / "cifar10" / "resnet20_aps.yaml").read_text())
    run_dir = tmp_path / "runs" / "cifar10" / "resnet20_aps"
    config = comparison.comparison_config(source, run_dir, COMPARISON_PRESETS["quick"], "compare_x", "aps")
    assert config["trainer"]["default_root_dir"] == str(run_dir)
    assert comparison.checkpoint_path(config) == run_dir / "checkpoints" / "last.ckpt"
    wandb_logger, csv_logger = config["trainer"]["logger"]
    assert wandb_logger["init_args"] == {**wandb_logger["init_args"], "group": "compare_x", "name": "aps",
                                         "save_dir": str(run_dir)}
    assert csv_logger == {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}
    monitor = comparison.find_callback(config, "InvarianceMonitor")["init_args"]
    assert monitor == {**COMPARISON_PRESETS["quick"].monitor, "batch_size": 256}
    assert source["trainer"]["default_root_dir"] == "runs/cifar10/resnet20_aps"  # the source is left alone
    assert "runs/cifar10" not in yaml.safe_dump(config).replace(str(run_dir), "")  # nothing left at the old place


def test_what_a_run_recorded_the_monitor_history_and_the_last_logged_values(tmp_path):
    first = [{"epoch": 0, "values": {"val/shift/flip_rate": 0.5}}]
    last = [{"epoch": 0, "values": {"val/shift/flip_rate": 0.3}}, {"epoch": 1, "values": {"val/shift/flip_rate": 0.25}}]
    torch.save({"state_dict": {}, "epoch": 1,
                "callbacks": {"InvarianceMonitor{'prefix': 'a'}": {"history": first},
                              "InvarianceMonitor{'prefix': 'b'}": {"history": last},
                              "InvarianceMonitor{'prefix': 'c'}": {"history": []}}}, tmp_path / "last.ckpt")
    history = comparison.monitor_history(read_checkpoint(tmp_path / "last.ckpt"))
    assert history == last  # the last monitor that measured
    assert comparison.last_monitored(history)["val/shift/flip_rate"] == 0.25
    assert math.isnan(comparison.last_monitored(history)["train/shift/flip_rate"])
    assert all(math.isnan(v) for v in comparison.last_monitored([]).values())

    versions = [tmp_path / "version_0", tmp_path / "version_1"]
    for folder in versions:
        folder.mkdir()
    (versions[0] / "metrics.csv").write_text("epoch,step,a,b\n0,10,0.5,\n0,10,,7\n1,20,0.25,\n")
    (versions[1] / "metrics.csv").write_text("epoch,step,a,b\n2,30,0.125,\n")
    assert comparison.last_logged(tmp_path, ["a", "b"]) == {"a": 0.125, "b": 7.0}
    assert math.isnan(comparison.last_logged(tmp_path, ["c"])["c"])


def test_imagenette_data_plumbing_on_generated_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "imagenette" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = yaml.safe_load((REPO_ROOT / "configs" / "imagenette" / "resnet18_plain.yaml").read_text())
    data = comparison.prepare_data(REPO_ROOT, "imagenette", tmp_path / "imagenette", COMPARISON_PRESETS["quick"], config, seed=0)
    assert data.preset.train_subset is None  # 6 training images < the preset's 2,000: all of them
    assert data.preset.test_images is None and "all test images" in data.preset.describe()  # 4 < 1,000
    assert data.overrides == {"root": str(tmp_path / "imagenette")}
    assert data.images.shape == (4, 3, 128, 128) and data.images.dtype == torch.uint8  # the whole val folder
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1]


def test_a_record_stands_only_for_a_finished_run_and_its_own_checkpoint(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    record = comparison.VariantRecord({"epochs": 3}, {}, [], [], {}, comparison.file_sha256(checkpoint))
    run = SimpleNamespace(max_epochs=3, checkpoint=checkpoint)
    assert record.stands_for(run)
    assert not record.stands_for(SimpleNamespace(max_epochs=4, checkpoint=checkpoint))  # an unfinished run's record
    checkpoint.write_bytes(b"retrained weights")
    assert not record.stands_for(run)  # the run was trained again since
    checkpoint.unlink()
    assert record.stands_for(run)  # no checkpoint (a fresh clone): the record is all there is


def test_the_preset_caps_the_epochs_and_fine_tuning_weights_are_found_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("INVARIANCE_SHARED_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    configs = REPO_ROOT / "configs" / "cifar10"
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet20-local.th").write_bytes(b"weights")

    def plan(name: str, preset: comparison.Preset, folders=(weights,)) -> comparison.VariantRun:
        return comparison.plan_variant(name, configs / f"resnet20_{name}.yaml", tmp_path / name, preset, {}, None,
                                       list(folders))

    cpu_full = COMPARISON_PRESETS["cpu-full"]
    finetuned = plan("finetuned_blur_consistency", cpu_full)
    assert finetuned.max_epochs == 5  # the config plans 5, fewer than the preset's 15
    assert finetuned.fit_args[finetuned.fit_args.index("--model.init_weights") + 1] == str(weights / "resnet20-local.th")
    augmented = plan("augmented", cpu_full)
    assert augmented.max_epochs == 15 and "--model.init_weights" not in augmented.fit_args  # 30 capped at 15
    assert plan("augmented", COMPARISON_PRESETS["full"]).max_epochs == 30  # no cap: the config's
    monkeypatch.setenv("INVARIANCE_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: the download fails
    monkeypatch.setattr(locations, "CHECKOUT_SHARED_DIR", tmp_path / "no-shared")  # no copy beside the checkout
    with pytest.raises(DownloadError, match="127.0.0.1:9/resnet20-12fca82f.th failed"):
        plan("finetuned_blur_consistency", cpu_full, folders=())  # when planning, before anything trains
