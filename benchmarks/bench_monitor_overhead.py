"""Cost of InvarianceMonitor (defaults) on a CIFAR ResNet-20 training epoch of CIFAR-10: a ratio within one run.

Trains one epoch without and one with the callback (same seed, same data, alternating order over
``--rounds``), and also times the callback's own ``measure`` calls. Writes
``benchmarks/results/monitor_overhead.json`` and ``.md``::

    python benchmarks/bench_monitor_overhead.py --data-dir ../shared --rounds 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from invariance_lightning.lightning.callbacks import InvarianceMonitor
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.data import CIFARDataModule

RESULTS = Path(__file__).resolve().parent / "results"


class TimedMonitor(InvarianceMonitor):
    """InvarianceMonitor that records the seconds each measurement takes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []

    def measure(self, trainer, pl_module):
        started = time.perf_counter()
        values = super().measure(trainer, pl_module)
        self.seconds.append(time.perf_counter() - started)
        return values


class TrainingTimer(pl.Callback):
    """Seconds spent in the training batches of the epoch (up to the start of validation)."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seconds = time.perf_counter() - self.started


def one_epoch(args: argparse.Namespace, with_monitor: bool) -> tuple[float, float, float]:
    """Wall seconds of a one-epoch fit (train + validation), of its training part, and the monitor's own."""
    pl.seed_everything(0)
    datamodule = CIFARDataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size, train_subset=args.train_subset)
    model = ImageClassifier("cifar_resnet20", augmentation="standard", schedule="none")
    timer = TrainingTimer()
    callbacks = [timer, TimedMonitor(log_plots=args.plots)] if with_monitor else [timer]
    trainer = pl.Trainer(
        max_epochs=1, accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule)
    wall = time.perf_counter() - started
    return wall, timer.seconds, (sum(callbacks[1].seconds) if with_monitor else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--train-subset", type=int, default=None, help="train images (default: all 45,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plots", action="store_true", help="also draw and save the plots (log_plots=True)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    plain, monitored, callback, training = [], [], [], []
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for with_monitor in order:
            wall, train_seconds, own = one_epoch(args, with_monitor)
            (monitored if with_monitor else plain).append(wall)
            training.append(train_seconds)
            if with_monitor:
                callback.append(own)
            print(f"round {round_index}: {'with' if with_monitor else 'without'} monitor {wall:.1f} s", flush=True)
    base, with_cb, own = statistics.median(plain), statistics.median(monitored), statistics.median(callback)
    train_images = args.train_subset or 45000
    # the monitor's cost is fixed per epoch; only the training part of an epoch grows with the training images
    full_epoch = base + statistics.median(training) * (45000 / train_images - 1)
    result = {
        "command": "python benchmarks/bench_monitor_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False) and k != "data_dir"
        ),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, accelerator {args.accelerator}",
        "train_images": train_images,
        "training_seconds": training,
        "projected_full_epoch_seconds": full_epoch,
        "projected_full_epoch_ratio": 1 + own / full_epoch,
        "epoch_seconds_without": plain,
        "epoch_seconds_with": monitored,
        "monitor_seconds": callback,
        "wall_ratio": with_cb / base,
        "monitor_share_of_plain_epoch": own / base,
        "target": "at most 1.05 (5% added to the epoch)",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitor_overhead.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "monitor_overhead.md").write_text(
        "# InvarianceMonitor overhead (defaults: 512 val + 512 train images, 7 frames)\n\n"
        f"`{result['command']}` on {result['machine']}, {result['train_images']} training images per epoch.\n\n"
        "| epoch without (s) | epoch with (s) | monitor's own time (s) | wall ratio | monitor / plain epoch "
        "| projected full 45k-image epoch (s) | projected ratio |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {base:.1f} | {with_cb:.1f} | {own:.1f} | {result['wall_ratio']:.3f} | {result['monitor_share_of_plain_epoch']:.3f} "
        f"| {full_epoch:.0f} | {result['projected_full_epoch_ratio']:.3f} |\n\n"
        "The projection scales the measured training part of the epoch to 45,000 images and keeps validation and "
        "the monitor's cost, which do not depend on the training set size. Target: at most 1.05.\n"
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
