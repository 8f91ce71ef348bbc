"""Distributed correctness on CPU (gloo, 2 processes): disjoint and complete shards, single-process values."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distributed_workers import free_port, lps_gradient_worker, metric_worker, protocol_worker
from invariance_lightning import (
    InvarianceMonitor,
    InvarianceReport,
    ScaleSequence,
    ShiftSequence,
    TransformConsistency,
    evaluate_invariance,
)
from invariance_lightning.lightning.callbacks.subsets import draw_indices
from invariance_lightning.metrics.protocols import PROTOCOLS, evaluate_protocol
from invariance_lightning.metrics.published import evaluate_protocols
from invariance_lightning.models import cifar_resnet
from invariance_lightning.nn.circular import CircularConv2d
from lightning_helpers import NUM_CLASSES, tiny_data, tiny_trainer

pytestmark = pytest.mark.slow

SEQUENCES = {"shift": ShiftSequence(max_shift=2, mode="zeros"), "scale": ScaleSequence([0.9, 1.0, 1.1])}


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


def test_protocol_totals_under_gloo_equal_single_process_with_uneven_and_empty_shards():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    images, targets = torch.rand(9, 3, 16, 16), torch.randint(0, 5, (9,))
    names = ("zhang2019", "imagenet_p_flip")
    expected = evaluate_protocols(model, images, targets, names, seed=3)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(protocol_worker, args=(2, free_port(), model, images, targets, names, out), nprocs=2, join=True)
        results = dict(out)
    assert results == {"uneven": expected, "empty_rank": expected}


FRAMES = 6  # frames per image: SEQUENCES' 3 shifts and 3 scales
PROTOCOL = "aps2021_standard"  # a published protocol with random shifts drawn per image index
ID_SCALE = 256  # ids are stored as (id + 1) / ID_SCALE, so that images stay in [0, 1] as the protocols need


def test_ddp_averages_the_gradients_of_lps_networks_with_circular_convs():
    """The hand-written backward of CircularConv2d and LPS's Gumbel mixing under DistributedDataParallel (gloo):
    the all-reduced gradients equal the mean of each half's gradients computed in one process."""
    torch.manual_seed(1)
    images, target = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    model = cifar_resnet(8, downsample="lps", padding_mode="circular").train()
    assert any(isinstance(m, CircularConv2d) for m in model.modules())
    halves = []
    for rank, shard in enumerate((slice(0, 4), slice(4, 8))):
        model.zero_grad()
        torch.manual_seed(100 + rank)
        nn.functional.cross_entropy(model(images[shard]), target[shard]).backward()
        halves.append({name: p.grad.clone() for name, p in model.named_parameters()})
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(lps_gradient_worker, args=(2, free_port(), images, target, out), nprocs=2, join=True)
        grads = dict(out)["grads"]
    assert grads.keys() == halves[0].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, (halves[0][name] + halves[1][name]) / 2, rtol=1e-4, atol=1e-6, msg=name)


def with_ids(images: torch.Tensor, first_id: int) -> torch.Tensor:
    """``images`` in [0, 1] whose channel 0 is the constant ``(id + 1) / ID_SCALE`` (its maximum in every shifted or
    rescaled frame)."""
    images = images.sigmoid()
    ids = torch.arange(first_id + 1, first_id + 1 + len(images), dtype=images.dtype) / ID_SCALE
    images[:, 0] = ids[:, None, None]
    return images


def id_loader(num_images: int, seed: int, first_id: int) -> DataLoader:
    images, targets = tiny_data(num_images, seed=seed)
    return DataLoader(TensorDataset(with_ids(images, first_id), targets), batch_size=8)


class Recorder(pl.LightningModule):
    """No BatchNorm (every process holds identical weights, so shards are measured on one model). ``forward``, which
    only the callbacks call, counts the images it sees by id; each process writes its counts to ``folder``. Inputs
    in [0, 1] are stretched (:meth:`stretch`), so that predictions differ between images and shifts."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, NUM_CLASSES),
        )
        self.folder = str(folder)
        self.seen: Counter[int] = Counter()

    def forward(self, x):
        self.seen.update(((x[:, 0].amax(dim=(1, 2)) * ID_SCALE).round().long() - 1).tolist())
        return self.net(self.stretch(x))

    @staticmethod
    def stretch(x):
        return (x - 0.5) * 10

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return nn.functional.cross_entropy(self.net(self.stretch(images)), targets)

    def validation_step(self, batch, batch_idx):
        pass

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self) -> None:
        self._write("fit")

    def on_test_end(self) -> None:
        self._write("test")

    def _write(self, stage: str) -> None:
        Path(self.folder, f"{stage}_rank{self.global_rank}.json").write_text(json.dumps(self.seen))


def measured_per_rank(folder: Path, stage: str, frames: int = FRAMES) -> list[set[int]]:
    """The images each process measured: all ``frames`` frames of an image went through its model, once.

    A process also forwards the first two images once to check the module's output, hence ``count % frames`` of 1.
    """
    shares = []
    for rank in range(2):
        counts = {int(i): n for i, n in json.loads((folder / f"{stage}_rank{rank}.json").read_text()).items()}
        assert all(n in (1, frames, frames + 1) for n in counts.values()), (rank, counts)
        shares.append({i for i, n in counts.items() if n >= frames})
    return shares


def assert_disjoint_and_complete(shares: list[set[int]], expected: set[int]) -> None:
    assert not shares[0] & shares[1], f"images measured on both processes: {sorted(shares[0] & shares[1])}"
    assert shares[0] | shares[1] == expected


def ddp_trainer(tmp_path: Path, callback) -> pl.Trainer:
    return tiny_trainer(
        tmp_path,
        max_epochs=1,
        strategy="ddp_spawn",
        devices=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )


def test_monitor_under_ddp_spawn_measures_disjoint_complete_shards_and_equals_single_process(tmp_path):
    callback = InvarianceMonitor(
        SEQUENCES, num_samples=15, log_plots=False, batch_size=16, normalize=None, protocols=(PROTOCOL,), seed=4
    )
    pl.seed_everything(0)
    model = Recorder(tmp_path)
    # val has a single image: rank 1's shard is empty; train's 15 images split 8 / 7
    trainer = ddp_trainer(tmp_path, callback)
    trainer.fit(model, id_loader(40, seed=1, first_id=0), id_loader(1, seed=2, first_id=100))

    train_indices = draw_indices(40, 15, seed=4, split="train")
    frames = FRAMES + PROTOCOLS[PROTOCOL].frames_per_image
    assert_disjoint_and_complete(measured_per_rank(tmp_path, "fit", frames), set(train_indices) | {100})
    train_images, train_targets = tiny_data(40, seed=1)
    val_images, val_targets = tiny_data(1, seed=2)
    for name, sequence in SEQUENCES.items():
        for split, images, targets in (
            ("train", with_ids(train_images, 0)[train_indices], train_targets[train_indices]),
            ("val", with_ids(val_images, 100), val_targets),
        ):
            expected = evaluate_invariance(model, images, targets, sequence)
            for metric in ("flip_rate", "consistency", "mac", "accuracy", "worst_case_accuracy"):
                logged = float(trainer.callback_metrics[f"invariance/{split}/{name}/{metric}"])
                assert logged == pytest.approx(float(expected[metric]), abs=1e-6), (split, name, metric)
    # the protocol: counts of both shards (global indices, val's rank 1 empty) summed = one process on the subset
    for split, images, targets in (
        ("train", with_ids(train_images, 0)[train_indices], train_targets[train_indices]),
        ("val", with_ids(val_images, 100), val_targets),
    ):
        expected = evaluate_protocol(model, images, targets, PROTOCOL, seed=4)
        for metric in ("consistency", "accuracy"):
            logged = float(trainer.callback_metrics[f"invariance/{split}/{PROTOCOL}/{metric}"])
            assert logged == pytest.approx(expected[metric], abs=1e-6), (split, metric)


def test_report_under_ddp_spawn_measures_disjoint_complete_shards_of_the_whole_split(tmp_path):
    report = InvarianceReport(SEQUENCES, log_plots=False, batch_size=16, normalize=None)
    model = Recorder(tmp_path)
    trainer = ddp_trainer(tmp_path, report)
    trainer.test(model, id_loader(13, seed=3, first_id=0))

    assert_disjoint_and_complete(measured_per_rank(tmp_path, "test"), set(range(13)))
    images, targets = tiny_data(13, seed=3)
    for name, sequence in SEQUENCES.items():
        expected = evaluate_invariance(model, with_ids(images, 0), targets, sequence)
        logged = float(trainer.callback_metrics[f"invariance_report/test/{name}/flip_rate"])
        assert logged == pytest.approx(float(expected["flip_rate"]), abs=1e-6), name
