"""The comparison of config variants (``invariance_lightning.lightning.comparison``, the engine of
``recipes/compare.py``): a tiny comparison on the shared CIFAR-10 checked against a hand-made evaluation, the recipe
on generated data (no ../shared needed) through one run's life (trained, interrupted, refused, resumed, reused,
rebuilt from its record), the config rewriting, what a run recorded, the data plumbing and bad input.

The expensive runs are module-scoped fixtures, each a stage of that life that keeps what it saw; the tests check one
behaviour each.
"""

from __future__ import annotations

import csv
import json
import math
import runpy
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
from invariance_lightning.lightning.comparison import training as comparison_training
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.models.pretrained import DownloadError
from invariance_lightning.reporting.comparison import COMPARISON_COLUMNS, MONITORED_COLUMNS

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


@dataclass
class Stage:
    """What a stage of a comparison left in its output folder."""

    output: Path
    columns: list[str]
    rows: list[dict[str, str]]
    markdown: str
    document: dict[str, Any]  # comparison.json

    @property
    def row(self) -> dict[str, str]:
        (row,) = self.rows
        return row


def finished(output: Path) -> Stage:
    columns, rows = read_rows(output)
    return Stage(
        output,
        columns,
        rows,
        (output / "comparison.md").read_text(),
        json.loads((output / "comparison.json").read_text()),
    )


# -- a tiny comparison of two variants on the shared CIFAR-10 ---------------------------------------------------------
@pytest.fixture(scope="module")
def shared_tiny(cifar10_dir, tmp_path_factory) -> Stage:
    output = tmp_path_factory.mktemp("shared_tiny") / "out"
    settings = ComparisonSettings(
        REPO_ROOT,
        variants=["plain", "blur"],
        preset="tiny",
        no_wandb=True,
        data_dir=cifar10_dir,
        output=output,
        command="python recipes/compare.py --preset tiny",
    )
    assert run_comparison(plan_comparison(settings)) == output / "comparison.md"
    return finished(output)


@pytest.mark.shared_data
def test_the_table_has_one_row_per_variant_in_the_defined_columns(shared_tiny):
    assert shared_tiny.columns == list(COMPARISON_COLUMNS)
    assert [row["variant"] for row in shared_tiny.rows] == ["plain", "blur"]
    for row in shared_tiny.rows:
        assert (row["epochs"], row["test_images"], row["training"], row["preset"]) == ("1", "64", "trained", "tiny")
        assert row["config"] == f"configs/cifar10/resnet20_{row['variant']}.yaml"


@pytest.mark.shared_data
def test_every_rate_in_the_table_is_a_number_between_0_and_1(shared_tiny):
    for row in shared_tiny.rows:
        for column in COMPARISON_COLUMNS:
            if column.endswith(("accuracy", "flip_rate", "consistency", "mac")):
                assert 0.0 <= float(row[column]) <= 1.0, column  # NaN fails too: the monitor's values were read
        assert float(row["train_images_per_second"]) > 0


@pytest.mark.shared_data
def test_each_row_says_the_cli_command_that_trained_it(shared_tiny):
    for row in shared_tiny.rows:
        assert row["command"].startswith("invariance-lightning fit --config ")
        assert "--trainer.max_epochs 1" in row["command"] and "--data.train_subset 128" in row["command"]


@pytest.mark.shared_data
def test_the_shift_numbers_equal_a_hand_made_evaluation_of_the_checkpoint(shared_tiny, cifar10_dir):
    plain = shared_tiny.rows[0]
    datamodule = CIFARDataModule(data_dir=cifar10_dir, train_subset=128)
    datamodule.setup("test")
    images, labels = datamodule.split_arrays("test", 64, seed=0)
    expected = hand_made_shift_metrics(Path(plain["checkpoint"]), images, labels)
    for column, value in expected.items():
        assert float(plain[column]) == pytest.approx(value, abs=1e-6), column


@pytest.mark.shared_data
def test_the_report_labels_a_smoke_run_and_links_its_plots(shared_tiny):
    markdown = shared_tiny.markdown
    assert "SMOKE RUN" in markdown and "| plain |" in markdown and "| blur |" in markdown
    assert "python recipes/compare.py --preset tiny" in markdown
    for name in PLOTS:
        assert f"]({name})" in markdown
        assert (shared_tiny.output / name).read_bytes()[:8] == PNG_MAGIC, name


# -- one run's life, through the recipe's command line, on generated data ---------------------------------------------
@pytest.fixture(scope="module")
def generated_cifar(tmp_path_factory) -> Path:
    """Random images in the shared .npz format; the configs hold out 5,000 training images for validation."""
    return write_random_cifar10(tmp_path_factory.mktemp("generated_cifar10"), train=5064, test=40)


@dataclass
class Scenario:
    """The recipe's ``main`` and the command line of a comparison of one variant planned for 2 epochs."""

    main: Callable[[list[str]], Path]
    output: Path
    base: list[str]

    @property
    def run_dir(self) -> Path:
        return self.output / "runs" / "cifar10" / "resnet20_plain"

    def run(self, *extra: str, output: Path | None = None) -> Stage:
        """Run the recipe (its plots skipped: seconds per call, tested on the shared data) and read what it wrote."""
        output = output or self.output
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(comparison_run, "save_figures", lambda *args: [])
            assert self.main([*self.base, "--output", str(output), *extra]) == output / "comparison.md"
        return finished(output)


@pytest.fixture(scope="module")
def scenario(generated_cifar, tmp_path_factory) -> Scenario:
    recipe = runpy.run_path(str(REPO_ROOT / "recipes" / "compare.py"), run_name="compare_recipe")
    base = [
        "--preset",
        "tiny",
        "--variants",
        "plain",
        "--epochs",
        "2",
        "--train_subset",
        "64",
        "--test_images",
        "16",
        "--no_wandb",
        "--data_dir",
        str(generated_cifar),
        "--monitor_samples",
        "24",
        "--protocols",
        "aps2021_circular",
        "--seed",
        "3",
    ]
    return Scenario(recipe["main"], tmp_path_factory.mktemp("scenario") / "out", base)


@pytest.fixture(scope="module")
def interrupted(scenario) -> Stage:
    """The 2-epoch run killed after its first epoch."""

    def stop_after_this_epoch(module):
        module.trainer.should_stop = True

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageClassifier, "on_train_epoch_end", stop_after_this_epoch)
        return scenario.run()


@pytest.fixture(scope="module")
def resumed(scenario, interrupted) -> Stage:
    """``--reuse`` after the interruption: the run resumes from ``last.ckpt``."""
    return scenario.run("--reuse")


@pytest.fixture(scope="module")
def reused(scenario, resumed) -> Stage:
    """``--reuse`` of the finished run, its record deleted first (else the record stands for it)."""
    comparison.record_path(scenario.output, "plain").unlink()
    return scenario.run("--reuse")


def test_an_interrupted_run_is_tabulated_with_the_epochs_it_finished(interrupted):
    assert (interrupted.row["training"], interrupted.row["epochs"], interrupted.row["test_images"]) == (
        "trained",
        "1",
        "16",
    )


def test_the_config_copy_gets_the_monitor_samples_of_the_command_line(scenario, interrupted):
    trained = yaml.safe_load((scenario.run_dir / "compare_config.yaml").read_text())
    assert comparison.find_callback(trained, "InvarianceMonitor")["init_args"]["num_samples"] == 24


def test_an_existing_run_is_refused_without_reuse(scenario, interrupted, capsys):
    with pytest.raises(SystemExit) as stop:
        scenario.main([*scenario.base, "--output", str(scenario.output)])  # no silent retraining
    assert stop.value.code == 2 and "exists: pass --reuse to use or resume it" in capsys.readouterr().err


def test_a_run_cannot_be_resumed_to_more_epochs_than_it_was_planned_for(scenario, interrupted, capsys):
    with pytest.raises(SystemExit) as stop:  # a 2-epoch one-cycle schedule cannot become 3 epochs
        scenario.main([*scenario.base, "--output", str(scenario.output), "--epochs", "3", "--reuse"])
    assert stop.value.code == 2 and "planned for 2 epochs" in capsys.readouterr().err


def test_reuse_resumes_a_stopped_run_to_its_planned_epochs(scenario, resumed):
    assert (resumed.row["training"], resumed.row["epochs"]) == ("resumed", "2")
    assert read_checkpoint(scenario.run_dir / "checkpoints" / "last.ckpt").global_step == 2 * 2  # 2 x 2 batches
    assert len(list(scenario.run_dir.rglob("metrics.csv"))) == 2  # the resumed fit logged to a second version


def resumed_log(scenario: Scenario) -> list[dict[str, str]]:
    """The rows of the resumed fit's ``metrics.csv`` (the newer logger version)."""
    with sorted(scenario.run_dir.rglob("metrics.csv"))[1].open(newline="") as file:
        return list(csv.DictReader(file))


def test_the_monitor_flip_rate_in_the_table_is_the_one_the_resumed_epoch_logged(scenario, resumed):
    measured = [r for r in resumed_log(scenario) if r.get("invariance/val/shift/flip_rate")]
    assert [r["epoch"] for r in measured] == ["1"]
    logged = float(measured[0]["invariance/val/shift/flip_rate"])
    assert float(resumed.row["monitor_val_shift_flip_rate"]) == pytest.approx(logged)


def test_the_training_speed_in_the_table_is_the_last_epochs_logged_speed(scenario, resumed):
    (speed,) = [float(r["train/images_per_second"]) for r in resumed_log(scenario) if r.get("train/images_per_second")]
    assert float(resumed.row["train_images_per_second"]) == pytest.approx(speed)


def test_reuse_evaluates_a_finished_run_without_training_it(scenario, reused):
    assert (reused.row["training"], reused.row["epochs"]) == ("reused", "2")
    assert read_checkpoint(scenario.run_dir / "checkpoints" / "last.ckpt").global_step == 2 * 2


def test_published_protocol_columns_come_before_the_monitor_columns(reused):
    at = reused.columns.index("monitor_train_shift_flip_rate")
    assert reused.columns[at - 2 : at] == ["aps2021_circular_consistency", "aps2021_circular_accuracy"]
    assert " aps2021_circular_consistency |" in reused.markdown


def test_published_protocol_numbers_equal_the_protocol_on_the_same_seeded_test_images(
    scenario, reused, generated_cifar
):
    images, labels = CIFARDataModule(data_dir=generated_cifar).split_arrays("test", 16, seed=3)
    loaded = load_classifier(scenario.run_dir / "checkpoints" / "last.ckpt")
    expected = evaluate_protocol(loaded.model, images, labels, "aps2021_circular", normalize=loaded.normalize, seed=3)
    for number in ("consistency", "accuracy"):
        assert float(reused.row[f"aps2021_circular_{number}"]) == expected[number], number


def test_the_record_keeps_the_per_epoch_log_and_the_monitor_history(scenario, reused):
    record = json.loads(comparison.record_path(scenario.output, "plain").read_text())
    assert [entry["epoch"] for entry in record["log"]] == [0.0, 1.0]
    assert record["log"][1]["train/images_per_second"] == pytest.approx(float(reused.row["train_images_per_second"]))
    assert [entry["epoch"] for entry in record["history"]] == [0, 1]


def test_the_record_stands_for_the_run_whose_checkpoint_it_was_made_from(scenario, reused):
    rebuilt = scenario.run("--reuse")
    assert rebuilt.rows == reused.rows and rebuilt.document["results"] == reused.document["results"]
    assert rebuilt.document["setup"]["actions"] == {"plain": "recorded"}


def test_the_record_rebuilds_the_tables_in_a_clone_without_the_run(scenario, reused, tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(scenario.output, clone)
    shutil.rmtree(clone / "runs")
    rebuilt = scenario.run("--reuse", output=clone)
    assert rebuilt.rows == reused.rows and rebuilt.document["results"] == reused.document["results"]
    assert rebuilt.document["setup"]["actions"] == {"plain": "recorded"}
    assert not (clone / "runs").exists()  # nothing trained


def test_a_record_made_with_other_settings_is_not_used(scenario, reused, generated_cifar):
    same = ComparisonSettings(
        REPO_ROOT,
        variants=["plain"],
        preset="tiny",
        epochs=2,
        train_subset=64,
        test_images=16,
        monitor_samples=24,
        no_wandb=True,
        data_dir=generated_cifar,
        output=scenario.output,
        protocols=["aps2021_circular"],
        seed=3,
        reuse=True,
    )
    assert plan_comparison(same).actions == {"plain": "recorded"}
    other_seed = replace(same, seed=4)  # other test images, other random shifts
    assert plan_comparison(other_seed).actions == {"plain": "reused"}  # the run is reused, its record is not


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "plain", "antialiased"], "valid variants"),
        (["--family", "mnist"], "'imagenette'"),
        (["--monitor_samples", "-3"], "argument --monitor_samples/--monitor-samples: must be an int >= 1, got '-3'"),
        (["--seed", "-1"], "argument --seed: must be an int >= 0, got '-1'"),
    ],
)
def test_bad_command_lines_exit_with_status_2_and_say_what_is_valid(argv, message, capsys):
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "compare.py"), run_name="compare_recipe")["main"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_options_take_the_lightning_cli_spelling_and_the_old_hyphen_spelling():
    parser = runpy.run_path(str(REPO_ROOT / "recipes" / "compare.py"), run_name="compare_recipe")["build_parser"]()
    for option in ("--runs_dir", "--runs-dir"):
        assert parser.parse_args([option, "here"]).runs_dir == Path("here")
    for option in ("--no_wandb", "--no-wandb"):
        assert parser.parse_args([option]).no_wandb is True


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
    assert wandb_logger["init_args"] == {
        **wandb_logger["init_args"],
        "group": "compare_x",
        "name": "aps",
        "save_dir": str(run_dir),
    }
    assert csv_logger == {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}
    monitor = comparison.find_callback(config, "InvarianceMonitor")["init_args"]
    assert monitor == {**COMPARISON_PRESETS["quick"].monitor, "batch_size": 256}
    assert source["trainer"]["default_root_dir"] == "runs/cifar10/resnet20_aps"  # the source is left alone
    assert "runs/cifar10" not in yaml.safe_dump(config).replace(str(run_dir), "")  # nothing left at the old place


def test_the_monitor_history_is_the_last_monitors_that_measured_and_its_last_values_are_read(tmp_path):
    first = [{"epoch": 0, "values": {"val/shift/flip_rate": 0.5}}]
    last = [{"epoch": 0, "values": {"val/shift/flip_rate": 0.3}}, {"epoch": 1, "values": {"val/shift/flip_rate": 0.25}}]
    torch.save(
        {
            "state_dict": {},
            "epoch": 1,
            "callbacks": {
                "InvarianceMonitor{'prefix': 'a'}": {"history": first},
                "InvarianceMonitor{'prefix': 'b'}": {"history": last},
                "InvarianceMonitor{'prefix': 'c'}": {"history": []},
            },
        },
        tmp_path / "last.ckpt",
    )
    history = comparison.monitor_history(read_checkpoint(tmp_path / "last.ckpt"))
    assert history == last  # the last monitor that measured
    assert comparison.last_monitored(history)["val/shift/flip_rate"] == 0.25
    assert math.isnan(comparison.last_monitored(history)["train/shift/flip_rate"])
    assert all(math.isnan(v) for v in comparison.last_monitored([]).values())


def test_the_last_logged_value_comes_from_the_latest_epoch_over_every_logger_version(tmp_path):
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
    data = comparison.prepare_data(
        REPO_ROOT, "imagenette", tmp_path / "imagenette", COMPARISON_PRESETS["quick"], config, seed=0
    )
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


def plan_cifar_variant(name: str, preset: comparison.Preset, folder: Path, weights_dirs=()) -> comparison.VariantRun:
    return comparison.plan_variant(
        name,
        REPO_ROOT / "configs" / "cifar10" / f"resnet20_{name}.yaml",
        folder / name,
        preset,
        {},
        None,
        list(weights_dirs),
    )


def test_the_preset_caps_the_epochs_and_a_config_planned_for_fewer_keeps_its_own(tmp_path):
    cpu_full = COMPARISON_PRESETS["cpu-full"]
    assert plan_cifar_variant("augmented", cpu_full, tmp_path).max_epochs == 15  # the config's 30, capped
    assert plan_cifar_variant("augmented", COMPARISON_PRESETS["full"], tmp_path).max_epochs == 30  # no cap
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet20-local.th").write_bytes(b"weights")
    assert plan_cifar_variant("finetuned_blur_consistency", cpu_full, tmp_path, [weights]).max_epochs == 5


def test_fine_tuning_weights_are_resolved_to_a_file_when_planning(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet20-local.th").write_bytes(b"weights")
    finetuned = plan_cifar_variant("finetuned_blur_consistency", COMPARISON_PRESETS["cpu-full"], tmp_path, [weights])
    assert finetuned.fit_args[finetuned.fit_args.index("--model.init_weights") + 1] == str(
        weights / "resnet20-local.th"
    )
    augmented = plan_cifar_variant("augmented", COMPARISON_PRESETS["cpu-full"], tmp_path, [weights])
    assert "--model.init_weights" not in augmented.fit_args


def test_missing_fine_tuning_weights_fail_when_planning_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.delenv("INVARIANCE_SHARED_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.setenv("INVARIANCE_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: the download fails
    monkeypatch.setattr(locations, "CHECKOUT_SHARED_DIR", tmp_path / "no-shared")  # no copy beside the checkout
    with pytest.raises(DownloadError, match="127.0.0.1:9/resnet20-12fca82f.th failed"):
        plan_cifar_variant("finetuned_blur_consistency", COMPARISON_PRESETS["cpu-full"], tmp_path)


def fake_run(tmp_path: Path) -> comparison.VariantRun:
    """A planned variant whose checkpoint the fake CLI below writes."""
    return comparison.VariantRun(
        "plain",
        tmp_path / "c.yaml",
        {"trainer": {}},
        tmp_path / "run" / "c.yaml",
        tmp_path / "run",
        tmp_path / "run" / "last.ckpt",
        1,
        ["--trainer.max_epochs", "1"],
    )


def test_training_hands_the_cli_its_arguments_and_leaves_sys_argv_alone(tmp_path, monkeypatch):
    seen = []

    def cli(argv):
        seen.append((list(argv), list(sys.argv)))
        (tmp_path / "run" / "last.ckpt").write_bytes(b"")

    monkeypatch.setattr(sys, "argv", ["pytest", "--some", "option"])
    monkeypatch.setattr(comparison_training, "cli_main", cli)
    comparison.train(fake_run(tmp_path), "resumed")
    assert seen == [
        (
            ["fit", "--config", str(tmp_path / "run" / "c.yaml"), "--trainer.max_epochs", "1", "--ckpt_path", "last"],
            ["pytest", "--some", "option"],
        )
    ]
    assert sys.argv == ["pytest", "--some", "option"]
    assert yaml.safe_load((tmp_path / "run" / "c.yaml").read_text()) == {"trainer": {}}  # the config copy


def test_only_lightning_clis_warning_about_sys_argv_is_silenced_while_training(tmp_path, monkeypatch):
    def cli(argv):
        warnings.warn(
            "LightningCLI's args parameter is intended to run from within Python ...", UserWarning, stacklevel=1
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
        (tmp_path / "run" / "last.ckpt").write_bytes(b"")

    monkeypatch.setattr(comparison_training, "cli_main", cli)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison.train(fake_run(tmp_path), "trained")
    assert [str(warning.message) for warning in caught] == ["something else"]


def test_the_old_presets_name_still_imports_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="PRESETS is deprecated: use COMPARISON_PRESETS"):
        from invariance_lightning.lightning.comparison import PRESETS
    assert PRESETS is COMPARISON_PRESETS
    with pytest.warns(DeprecationWarning, match="reporting.comparison.MONITORED_COLUMNS"):
        assert comparison.MONITORED == {key: column for key, (column, _) in MONITORED_COLUMNS.items()}
    with pytest.raises(AttributeError, match="has no attribute 'NOTHING'"):
        comparison.NOTHING
