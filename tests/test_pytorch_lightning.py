"""The callbacks under the standalone ``pytorch_lightning`` package: user code written entirely against it.

``pytorch_lightning`` and ``lightning.pytorch`` ship the same code as two sets of classes, so a
``pytorch_lightning.LightningDataModule`` is no ``lightning.pytorch.LightningDataModule`` (``is_overridden`` raised
``ValueError: Expected a parent`` at fit start) and a ``pytorch_lightning.loggers.WandbLogger`` no
``lightning.pytorch.loggers.WandbLogger`` (W&B got the scalars but silently none of the media). Real tiny
``pytorch_lightning.Trainer`` runs on CPU; the reference runs use ``lightning.pytorch``.
"""

from __future__ import annotations

import copy
import sys

import lightning.pytorch
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invariance_lightning import FaultTolerantLogger, InvarianceMonitor, InvarianceReport, evaluate_invariance
from invariance_lightning.lightning import packages
from invariance_lightning.transforms import sequence_preset
from lightning_helpers import ClassifierSteps, TinyClassifier, tiny_trainer

NUM_CLASSES = 6
#: The tiny images are in [0, 1]; centred, an untrained network tells them apart (not all one class).
NORMALIZE = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def tiny_net() -> nn.Module:
    """A strided CNN without global pooling: far from shift invariant, and varied predictions untrained."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, NUM_CLASSES),
    )


# -- user code, written against pytorch_lightning only -------------------------------------------------------------
class PLClassifier(ClassifierSteps, pl.LightningModule):
    """``net`` trained with cross-entropy and SGD, exactly as ``lightning_helpers.TinyClassifier``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def images_and_targets(num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny 16x16 images in [0, 1] and their targets."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_images, 3, 16, 16, generator=generator), torch.randint(
        0, NUM_CLASSES, (num_images,), generator=generator
    )


class PLDataModule(pl.LightningDataModule):
    """Train, val and test loaders over fixed tiny tensors (no shuffling: two runs see the same batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = {
            "train": images_and_targets(32, 1),
            "val": images_and_targets(16, 2),
            "test": images_and_targets(16, 3),
        }

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(TensorDataset(*self.data[split]), batch_size=8)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def pl_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return pl.Trainer(**{**options, **kwargs})


def monitor(**kwargs) -> InvarianceMonitor:
    return InvarianceMonitor(
        **{"num_samples": 12, "batch_size": 8, "log_plots": False, "normalize": NORMALIZE, **kwargs}
    )


@pytest.fixture
def wandb_run_closed():
    """Finish the W&B run a test opened (a later WandbLogger would join it)."""
    wandb = pytest.importorskip("wandb")
    yield
    wandb.finish()


# -- tests ---------------------------------------------------------------------------------------------------------
def test_fit_with_a_pytorch_lightning_datamodule_logs_what_lightning_pytorch_logs(tmp_path):
    torch.manual_seed(0)
    model = PLClassifier(tiny_net())
    reference_model = TinyClassifier(NUM_CLASSES)  # the same training code, under lightning.pytorch
    reference_model.net = copy.deepcopy(model.net)
    datamodule = PLDataModule()

    callback = monitor()
    trainer = pl_trainer(tmp_path / "pl", callbacks=[callback])
    trainer.fit(model, datamodule=datamodule)  # raised "ValueError: Expected a parent" at fit start

    reference = monitor()
    reference_trainer = tiny_trainer(
        tmp_path / "lightning", logger=False, enable_checkpointing=False, callbacks=[reference]
    )
    reference_trainer.fit(reference_model, datamodule.train_dataloader(), datamodule.val_dataloader())

    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("invariance/")}
    expected = {k: float(v) for k, v in reference_trainer.callback_metrics.items() if k.startswith("invariance/")}
    assert "invariance/val/shift/flip_rate" in logged and "invariance/train/scale/accuracy" in logged
    assert logged == expected
    assert [row["values"] for row in callback.history] == [row["values"] for row in reference.history]
    assert [row["epoch"] for row in callback.history] == [0, 1]
    assert 0 < logged["invariance/val/shift/flip_rate"] < 1, "a network with something to measure"


def test_is_overridden_recognises_the_classes_of_both_packages():
    class Transferring(pl.LightningDataModule):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch

    class LightningTransferring(lightning.pytorch.LightningDataModule):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch

    assert packages.is_overridden("transfer_batch_to_device", Transferring())
    assert not packages.is_overridden("transfer_batch_to_device", PLDataModule())
    assert packages.is_overridden("transfer_batch_to_device", LightningTransferring())
    assert not packages.is_overridden("transfer_batch_to_device", lightning.pytorch.LightningDataModule())
    assert packages.is_overridden("training_step", PLClassifier(nn.Identity()))
    assert packages.is_overridden("state_dict", monitor()) and not packages.is_overridden(
        "state_dict", InvarianceReport()
    )
    with pytest.raises(TypeError, match="expected a LightningModule, LightningDataModule or Callback.*got Module"):
        packages.is_overridden("forward", nn.Module())


def test_the_callbacks_are_callbacks_of_both_packages(tmp_path):
    for callback in (monitor(), InvarianceReport()):
        assert isinstance(callback, pl.Callback) and isinstance(callback, lightning.pytorch.Callback)
    callback = monitor()
    # a single callback, not in a list: pytorch_lightning's Trainer accepts it only as its own package's Callback
    trainer = pl_trainer(tmp_path, callbacks=callback)
    assert callback in trainer.callbacks


def test_without_pytorch_lightning_only_lightning_pytorch_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)  # as if not installed: importing it fails
    assert packages._pytorch_lightning() is None
    monkeypatch.undo()
    assert packages._pytorch_lightning() is pl
    assert packages.PACKAGES == (lightning.pytorch, pl)


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "fault_tolerant"])
def test_pytorch_lightning_wandb_logger_receives_the_media(tmp_path, monkeypatch, wandb_run_closed, wrap):
    import wandb

    logger = WandbLogger(project="invariance-tests", save_dir=str(tmp_path), offline=True)
    run = logger.experiment
    payloads: list[dict] = []
    original = run.log

    def spy(data, *args, **kwargs):
        payloads.append(dict(data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(run, "log", spy)
    trainer = pl_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        logger=FaultTolerantLogger(logger) if wrap else logger,
        callbacks=[monitor(log_plots=True)],
    )
    trainer.fit(PLClassifier(tiny_net()), datamodule=PLDataModule())

    media = {key: value for payload in payloads for key, value in payload.items()}
    assert "invariance/val/shift/flip_rate" in media  # the scalars arrived before the fix too
    assert isinstance(media.get("invariance_plots/shift/per_frame"), wandb.Image), sorted(media)
    assert isinstance(media.get("invariance_plots/history"), wandb.Image)
    assert isinstance(media.get("invariance_tables/shift/per_frame"), wandb.Table)
    assert "invariance_charts/shift/flip_rate" in media
    assert not (tmp_path / "invariance_plots").exists(), "no PNG fallback next to a W&B logger"


def test_pytorch_lightning_tensorboard_logger_receives_the_figures(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, name="tb")
    keys: list[str] = []
    original = logger.experiment.add_figure

    def spy(key, *args, **kwargs):
        keys.append(key)
        return original(key, *args, **kwargs)

    monkeypatch.setattr(logger.experiment, "add_figure", spy)
    trainer = pl_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, logger=logger, callbacks=[monitor(log_plots=True)]
    )
    trainer.fit(PLClassifier(tiny_net()), datamodule=PLDataModule())
    assert {"invariance_plots/shift/per_frame", "invariance_plots/scale/per_frame", "invariance_plots/history"} <= set(
        keys
    )


def test_report_under_pytorch_lightning_test_equals_evaluate_invariance(tmp_path):
    torch.manual_seed(0)
    model = PLClassifier(tiny_net())
    datamodule = PLDataModule()
    sequences = sequence_preset("monitor")
    report = InvarianceReport(
        sequences=sequences, batch_size=8, log_plots=False, normalize=NORMALIZE, output_dir=tmp_path / "report"
    )
    trainer = pl_trainer(tmp_path, logger=CSVLogger(tmp_path, name="csv"), callbacks=[report])
    (metrics,) = trainer.test(model, datamodule=datamodule)

    images, targets = datamodule.data["test"]
    for name, sequence in sequences.items():
        expected = evaluate_invariance(
            model, images, targets, sequence, batch_size=8, normalize=NORMALIZE, num_classes=NUM_CLASSES
        )
        for metric in ("flip_rate", "consistency", "mac", "top5_distance", "accuracy", "worst_case_accuracy"):
            assert metrics[f"invariance_report/test/{name}/{metric}"] == pytest.approx(
                float(expected[metric]), abs=1e-6
            )
            assert float(report.results[name][metric]) == pytest.approx(float(expected[metric]), abs=1e-6)
    assert 0 < metrics["invariance_report/test/shift/flip_rate"] < 1, "a network with something to measure"
    assert (tmp_path / "report" / "invariance_report.json").exists()
