"""Distributed correctness on CPU (gloo, 2 processes): synced values equal single-process values exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from distributed_workers import free_port, metric_worker
from lightning_helpers import NUM_CLASSES, tiny_data, tiny_loader, tiny_trainer
from torch import nn

from invariance_lightning import InvarianceMonitor, ScaleSequence, ShiftSequence, TransformConsistency, evaluate_invariance
from invariance_lightning.callbacks.subsets import _draw_indices

pytestmark = pytest.mark.slow


def test_metric_under_gloo_equals_single_process_with_uneven_and_empty_shards():
    torch.manual_seed(0)
    logits = torch.randn(13, 5, 10)
    target = torch.randint(0, 10, (13,))
    expected = TransformConsistency()
    expected.update(logits, target)
    expected = expected.compute()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(metric_worker, args=(2, free_port(), logits, target, out), nprocs=2, join=True)
        results = dict(out)
    for case in ("uneven", "empty_rank"):
        for key, value in expected.items():
            torch.testing.assert_close(results[case][key], value, rtol=0, atol=0, msg=f"{case}: {key}")


class NoBatchNorm(pl.LightningModule):
    """No BatchNorm: every process holds identical weights, so shards are measured on one model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return nn.functional.cross_entropy(self(images), targets)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_monitor_under_ddp_spawn_equals_single_process(tmp_path):
    sequences = {"shift": ShiftSequence(max_shift=2, mode="zeros"), "scale": ScaleSequence([0.9, 1.0, 1.1])}
    callback = InvarianceMonitor(sequences, num_samples=15, log_plots=False, batch_size=16)
    pl.seed_everything(0)
    model = NoBatchNorm()
    trainer = tiny_trainer(tmp_path, max_epochs=1, strategy="ddp_spawn", devices=2, logger=False, enable_checkpointing=False)
    trainer.callbacks.append(callback)
    # val has a single image: rank 1's shard is empty; train's 15 images split 8 / 7
    trainer.fit(model, tiny_loader(40, seed=1), tiny_loader(1, seed=2))

    train_images, train_targets = tiny_data(40, seed=1)
    train_indices = _draw_indices(40, 15, seed=0, split="train")
    val_images, val_targets = tiny_data(1, seed=2)
    for name, sequence in sequences.items():
        for split, images, targets in (
            ("train", train_images[train_indices], train_targets[train_indices]),
            ("val", val_images, val_targets),
        ):
            expected = evaluate_invariance(model, images, targets, sequence)
            for metric in ("flip_rate", "consistency", "mac", "accuracy", "worst_case_accuracy"):
                logged = float(trainer.callback_metrics[f"invariance/{split}/{name}/{metric}"])
                assert logged == pytest.approx(float(expected[metric]), abs=1e-6), (split, name, metric)
