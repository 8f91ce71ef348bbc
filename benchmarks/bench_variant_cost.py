"""Training images/s of each CIFAR-10 variant under the ``cpu-full`` preset, as ratios to ``augmented``.

The comparison's ``train img/s`` column is each run's last epoch on whatever the machine was doing then (runs of
different sessions, some sharing the cores with tests). This measures the variants side by side instead: every arm
is the variant's config (``configs/cifar10/resnet20_<variant>.yaml``, its ``model`` section) with the preset's
model overrides (channels-last, label smoothing 0.1) on the preset's data path (``CIFARDataModule``'s resident
uint8 batches of 128 from the 45,000 training images, kornia augmentation). A fine-tuning config trains like its
from-scratch twin here: the initial weights do not change the cost, so they are not loaded.

Each arm fits 2 epochs of ``--batches`` batches and reports the second epoch's ``train/images_per_second`` (the
module's clock: training batches with loading and augmentation). Arms alternate over ``--rounds`` rounds so that
machine load hits all of them; medians and ratios to ``augmented`` are reported. Results:
``benchmarks/results/variant_cost.{json,md}``.

    python benchmarks/bench_variant_cost.py
"""

from __future__ import annotations

import argparse
import os
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from bench_cpu_training import SHARED, alternate, images_per_second, machine, write_report

from invariance_lightning.lightning.comparison import COMPARISON_PRESETS
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "augmented"
warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")


def model_options(variant: str) -> dict[str, Any]:
    """The variant config's ``ImageClassifier`` arguments with the ``cpu-full`` preset's overrides, without initial
    weights."""
    config = yaml.safe_load((ROOT / "configs" / "cifar10" / f"resnet20_{variant}.yaml").read_text())
    options = {**config["model"], **COMPARISON_PRESETS["cpu-full"].model}
    options.pop("init_weights", None)
    return options


def variant_rate(options: dict[str, Any], datamodule: CIFARDataModule, batches: int) -> float:
    """Training images/s of a fresh ``ImageClassifier(**options)``."""
    return images_per_second(ImageClassifier(**options), batches, datamodule=datamodule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["augmented", "augmented_blur", "augmented_aps", "consistency", "augmented_blur_consistency"],
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="training batches per epoch (2 epochs per arm)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "variant_cost")
    args = parser.parse_args()
    if BASELINE not in args.variants:
        parser.error(f"--variants must include the baseline {BASELINE!r}")
    pl.seed_everything(0, verbose=False)
    batch_size = COMPARISON_PRESETS["cpu-full"].data["batch_size"]
    datamodule = CIFARDataModule(data_dir=SHARED / "data" / "cifar10", download=False, batch_size=batch_size)
    datamodule.setup("fit")
    options = {variant: model_options(variant) for variant in args.variants}
    load_before = os.getloadavg()
    runs = {variant: partial(variant_rate, options[variant], datamodule) for variant in args.variants}
    rates = alternate(runs, args.rounds, args.batches)
    meta = {
        "command": "python benchmarks/bench_variant_cost.py " + " ".join(["--variants", *args.variants]),
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "rounds": args.rounds,
        "batches_per_epoch": args.batches,
        "batch_size": batch_size,
    }
    setup = (
        f"`{meta['command']}`: {meta['machine']}, 1-min load average {meta['load_average_before_after']} "
        f"(before, after). ResNet-20, batch {batch_size}, resident uint8 + kornia, channels-last; per arm the "
        f"second of two {args.batches}-batch training epochs, median of {args.rounds} alternating rounds."
    )
    write_report(
        args.out,
        meta,
        rates,
        BASELINE,
        ("ratio_to_augmented", f"ratio to {BASELINE}"),
        "Training cost of the CIFAR-10 variants under the cpu-full preset",
        setup,
    )


if __name__ == "__main__":
    main()
