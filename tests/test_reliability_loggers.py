"""Logger faults never stop training: no W&B package, W&B disabled, failing media, unwritable logs, failing loggers."""

from __future__ import annotations

import csv
import importlib.util
import pickle
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from invariance_lightning import InvarianceMonitor, ShiftSequence
from invariance_lightning.lightning.loggers import FaultTolerantLogger
from lightning_helpers import TinyClassifier, tiny_loader, tiny_trainer

REPO = Path(__file__).resolve().parents[1]
SCALARS = ("invariance/val/shift/flip_rate", "invariance/train/shift/consistency", "val_loss")


def monitor(**kwargs) -> InvarianceMonitor:
    """A cheap monitor: one 2-frame sequence (plots are most of the cost), 8 images per split."""
    options = dict(sequences={"shift": ShiftSequence(max_shift=1)}, num_samples=8, batch_size=16, log_plots=True)
    options.update(kwargs)
    return InvarianceMonitor(**options)


def fit(
    tmp_path: Path, max_epochs: int = 2, log_plots: bool = True, **trainer_kwargs
) -> tuple[pl.Trainer, InvarianceMonitor, list[str]]:
    """Train the tiny model with a monitor; returns the trainer, the callback and every warning message."""
    callback = monitor(log_plots=log_plots)
    trainer_kwargs.setdefault("callbacks", [])
    trainer_kwargs["callbacks"] = [callback, *trainer_kwargs["callbacks"]]
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=2, **trainer_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), tiny_loader(16, seed=1), tiny_loader(8, seed=2))
    assert [row["epoch"] for row in callback.history] == list(range(max_epochs)), "every epoch must be measured"
    for name in SCALARS:
        assert name in trainer.callback_metrics, name
    return trainer, callback, [str(w.message) for w in caught]


def matching(messages: list[str], text: str) -> list[str]:
    return [m for m in messages if text in m]


class BrokenLogger(CSVLogger):
    """A CSVLogger whose tracking backend fails on every call."""

    def log_metrics(self, metrics, step=None):
        raise ConnectionError("tracking server unreachable")

    def log_hyperparams(self, params, *args, **kwargs):
        raise ConnectionError("tracking server unreachable")


class HparamsClassifier(TinyClassifier):
    def __init__(self, num_classes: int = 6) -> None:
        super().__init__(num_classes)
        self.save_hyperparameters()


@pytest.fixture
def hide_wandb(monkeypatch):
    """Make ``import wandb`` fail as if it were not installed; the real module (if any) comes back afterwards."""
    if importlib.util.find_spec("wandb") is not None:
        import wandb  # noqa: F401  (loaded first so that undoing the patch restores a whole package)

    def hide() -> None:
        monkeypatch.setitem(sys.modules, "wandb", None)
        with pytest.raises(ImportError):
            import wandb  # noqa: F401

    return hide


def test_without_the_wandb_package_plots_go_to_png_files(tmp_path, hide_wandb):
    hide_wandb()
    trainer, _, messages = fit(tmp_path, max_epochs=1)
    assert not matching(messages, "could not"), messages
    pngs = {p.name for p in Path(trainer.log_dir, "invariance_plots").glob("*.png")}
    assert {"invariance_plots_history_epoch000.png", "invariance_plots_shift_per_frame_epoch000.png"} <= pngs


def build_cli(args: list[str]):
    """Parse and instantiate like ``invariance-lightning fit`` without running anything."""
    from lightning.pytorch import LightningDataModule

    from invariance_lightning.lightning.cli import InvarianceCLI
    from invariance_lightning.lightning.module import ImageClassifier

    return InvarianceCLI(ImageClassifier, LightningDataModule, subclass_mode_data=True, args=args, run=False)


SHIPPED_CONFIG = str(REPO / "configs" / "cifar10" / "resnet20_plain.yaml")  # a WandbLogger with a 'group'


def test_cli_replaces_the_configured_wandb_logger_by_csv_when_wandb_is_missing(tmp_path, hide_wandb):
    args = ["--config", SHIPPED_CONFIG, "--trainer.default_root_dir", str(tmp_path)]
    if importlib.util.find_spec("wandb") is not None:
        assert type(build_cli(args).trainer.logger).__name__ == "WandbLogger", "with wandb installed the logger stays"
    hide_wandb()
    assert type(build_cli(args).trainer.logger) is CSVLogger


def test_cli_csv_fallback_logs_under_the_default_root_dir_given_on_the_command_line(tmp_path, hide_wandb):
    hide_wandb()
    cli = build_cli(["--config", SHIPPED_CONFIG, "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.logger.save_dir == str(tmp_path)


def test_wandb_disabled_mode_trains_and_keeps_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # mode passed explicitly too: wandb keeps process-wide settings from earlier (offline) runs in the same session
    logger = WandbLogger(project="invariance-tests", save_dir=str(tmp_path), mode="disabled")
    _, _, messages = fit(tmp_path, max_epochs=1, logger=logger)
    assert not matching(messages, "could not"), messages
    assert not list(tmp_path.rglob("*.wandb")), "disabled W&B must write no run files"


def test_failing_tensorboard_figures_warn_once_and_scalars_are_still_logged(tmp_path):
    pytest.importorskip("tensorboard")

    class FigureFailingLogger(TensorBoardLogger):
        @property
        def experiment(self):
            writer = super().experiment
            writer.add_figure = self._fail
            return writer

        @staticmethod
        def _fail(*args, **kwargs):
            raise RuntimeError("figure backend crashed")

    logger = FigureFailingLogger(tmp_path, name="tb")
    trainer, _, messages = fit(tmp_path, logger=logger)
    (warning,) = matching(messages, "could not log TensorBoard figures")
    assert "figure backend crashed" in warning and "training continues" in warning
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    logged = events.Scalars("invariance/val/shift/flip_rate")
    assert [e.value for e in logged][-1] == pytest.approx(
        float(trainer.callback_metrics["invariance/val/shift/flip_rate"])
    )
    assert len(logged) == 2


def test_unwritable_log_directory_warns_and_training_finishes(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a regular file: nothing can be created below it (works as root, unlike chmod)")
    logger = FaultTolerantLogger(CSVLogger(blocker / "logs", name="csv"))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="invariance/val/shift/flip_rate")
    _, _, messages = fit(tmp_path, logger=logger, callbacks=[checkpoint])
    assert len(matching(messages, "could not log PNG files")) == 1
    assert len(matching(messages, "CSVLogger.experiment failed")) == 1
    assert len(matching(messages, "CSVLogger.log_metrics failed")) == 1
    assert logger.failures["log_metrics"] > 1, "later failures are counted, not warned about"
    assert checkpoint.best_model_path, "checkpointing to a writable folder is unaffected"


def test_logger_failures_warn_once_per_method_and_training_continues(tmp_path):
    logger = FaultTolerantLogger(BrokenLogger(tmp_path, name="broken"))
    callback = monitor(log_plots=False)
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, logger=logger, callbacks=[callback])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(HparamsClassifier(), tiny_loader(16, seed=1), tiny_loader(8, seed=2))
    messages = [str(w.message) for w in caught if "FaultTolerantLogger" in str(w.message)]
    assert sorted(m.split(".")[1].split(" ")[0] for m in messages) == ["log_hyperparams", "log_metrics"], messages
    assert all("BrokenLogger" in m and "tracking server unreachable" in m for m in messages)
    assert logger.failures["log_metrics"] >= 2 and logger.failures["log_hyperparams"] == 1
    assert len(callback.history) == 2
    assert "invariance/val/shift/flip_rate" in trainer.callback_metrics


def test_a_working_logger_behaves_the_same_wrapped(tmp_path):
    def run(folder: Path, wrap: bool) -> tuple[list[dict[str, str]], str]:
        pl.seed_everything(0)
        logger: Logger = CSVLogger(folder, name="csv")
        checkpoint = ModelCheckpoint()
        trainer = tiny_trainer(
            folder,
            max_epochs=2,
            limit_train_batches=2,
            logger=FaultTolerantLogger(logger) if wrap else logger,
            callbacks=[monitor(log_plots=False), checkpoint],
        )
        trainer.fit(TinyClassifier(), tiny_loader(16, seed=1), tiny_loader(8, seed=2))
        with open(Path(logger.log_dir) / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        return rows, str(Path(checkpoint.best_model_path).relative_to(folder))

    plain_rows, plain_checkpoint = run(tmp_path / "plain", wrap=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="FaultTolerantLogger")  # the wrapper must never warn here
        wrapped_rows, wrapped_checkpoint = run(tmp_path / "wrapped", wrap=True)
    assert wrapped_rows == plain_rows and "invariance/val/shift/mac" in wrapped_rows[-1]
    assert wrapped_checkpoint == plain_checkpoint == "csv/version_0/checkpoints/epoch=1-step=4.ckpt"


def test_wrapper_forwards_attributes_pickles_and_rejects_non_loggers(tmp_path):
    inner = CSVLogger(tmp_path, name="csv", version=3)
    logger = FaultTolerantLogger(inner)
    assert (logger.name, logger.version, logger.save_dir, logger.log_dir) == ("csv", 3, str(tmp_path), inner.log_dir)
    assert logger.experiment is inner.experiment and logger.logger is inner
    assert logger.log_hyperparams({"lr": 0.1}) is None and not logger.failures
    restored = pickle.loads(pickle.dumps(logger))
    assert restored.name == "csv" and isinstance(restored.logger, CSVLogger)
    with pytest.raises(AttributeError):
        logger.no_such_attribute
    with pytest.raises(TypeError, match="logger must be a lightning.pytorch Logger.*got str"):
        FaultTolerantLogger("csv")


def make_logger(kind: str, root: Path) -> Logger:
    if kind == "csv":
        return CSVLogger(root, name="csv")
    if kind == "tensorboard":
        return TensorBoardLogger(root, name="tb")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project="invariance-tests", save_dir=str(root), offline=True, id="fixed-run")


def finish_wandb_run() -> None:
    import wandb

    wandb.finish()


@pytest.mark.parametrize("kind,package", [("csv", None), ("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_wrapping_changes_no_directory_a_trainer_or_callback_reads(tmp_path, kind, package, monkeypatch):
    if package:
        pytest.importorskip(package)
    monkeypatch.setenv("WANDB_MODE", "offline")

    def run(root: Path, wrap: bool) -> tuple[dict[str, str], list[str]]:
        """Where one short fit puts things, with ``root`` written as <root>; and the files it writes."""
        if kind == "wandb":
            finish_wandb_run()  # WandbLogger would join a run an earlier test left open
        inner = make_logger(kind, root)
        logger = FaultTolerantLogger(inner) if wrap else inner
        parser = LightningArgumentParser()
        parser.add_argument("--seed", type=int, default=0)
        checkpoint = ModelCheckpoint()
        save_config = SaveConfigCallback(parser, parser.parse_args([]))  # what LightningCLI adds
        trainer = tiny_trainer(
            root,
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=0,
            logger=logger,
            callbacks=[checkpoint, save_config],
        )
        trainer.fit(TinyClassifier(), tiny_loader(8))
        seen = {
            "trainer.log_dir": trainer.log_dir,
            "checkpoint": checkpoint.best_model_path,
            "isinstance": isinstance(trainer.logger, type(inner)),  # Lightning dispatches on the logger's type
        }
        for name in ("log_dir", "save_dir", "name", "version", "root_dir"):
            seen[f"logger.{name}"] = getattr(trainer.logger, name, "<no such attribute>")
        if kind == "wandb":
            finish_wandb_run()
        files = sorted(
            str(path.relative_to(root).parent / ("events" if path.name.startswith("events.out") else path.name))
            for path in root.rglob("*")
            if path.is_file() and path.relative_to(root).parts[0] != "wandb"  # W&B run folders are timestamped
        )
        return {key: str(value).replace(str(root), "<root>") for key, value in seen.items()}, files

    bare, bare_files = run(tmp_path / "bare", wrap=False)
    wrapped, wrapped_files = run(tmp_path / "wrapped", wrap=True)
    assert {key: (bare[key], wrapped[key]) for key in bare if wrapped[key] != bare[key]} == {}
    assert wrapped_files == bare_files
    config = Path(bare["trainer.log_dir"].replace("<root>", str(tmp_path / "wrapped"))) / "config.yaml"
    assert config.is_file(), "SaveConfigCallback writes into trainer.log_dir"
    if kind != "wandb":  # CSV/TensorBoard runs keep their config in their own version folder
        assert bare["trainer.log_dir"] == bare["logger.log_dir"] and bare["trainer.log_dir"].endswith("version_0")
