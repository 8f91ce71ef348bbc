"""Training images/s of the ``cpu-full`` preset's data path against the torchvision ``DataLoader`` + PIL pipeline.

Every arm trains the same CIFAR-10 ResNet-20 (``ImageClassifier``, SGD, one-cycle, label smoothing 0.1, batch 128)
with a real ``Trainer`` on the 45,000-image training split; only the input pipeline (and, for the first arm, the
memory format) differs:

- ``cpu-full preset``: ``CIFARDataModule``'s fast path (batches cut from one device-resident uint8 tensor), kornia
  crop + flip on the batch (``augmentation="standard"``), channels-last, as ``recipes/compare.py --preset cpu-full``;
- ``resident uint8 + kornia, NCHW``: the same without channels-last (what the memory format alone adds);
- ``torchvision DataLoader + PIL, N workers``: what torchvision's CIFAR-10 recipe does, per image in a
  ``DataLoader``: ``PIL.Image.fromarray``, ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``
  (the model then only normalizes; ``augmentation="none"``), with 0 and 2 workers (not persistent: torchvision's
  default, so worker start-up is part of each epoch, as in a real run).

Each arm fits 2 epochs of ``--batches`` batches and reports the second epoch's ``train/images_per_second`` (the
module's own clock: training batches with loading and augmentation, no validation). Arms alternate over
``--rounds`` rounds so machine load hits all of them; medians are reported with ratios to the faster PIL arm.
Results: ``benchmarks/results/cpu_training.{json,md}``.

    python benchmarks/bench_cpu_training.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.transforms.normalization import CIFAR_STATS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INVARIANCE_SHARED_DIR", ROOT.parent / "shared"))
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")


class PILImages(Dataset[tuple[torch.Tensor, int]]):
    """HWC uint8 images turned into PIL images and transformed one at a time, as ``torchvision.datasets.CIFAR10``
    does in ``__getitem__`` (that class reads only the original pickled batches, so it cannot read the .npz)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def images_per_second(model: ImageClassifier, batches: int, **fit_kwargs: Any) -> float:
    """The second of two ``batches``-batch training epochs, as the module logs it."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, **fit_kwargs)
    return float(trainer.callback_metrics["train/images_per_second"])


def arms(batch_size: int) -> dict[str, Callable[[int], float]]:
    datamodule = CIFARDataModule(data_dir=SHARED / "data" / "cifar10", download=False, batch_size=batch_size)
    datamodule.setup("fit")
    images, labels = datamodule.split_arrays("train")  # uint8 (N, 3, 32, 32): the same 45,000 training images
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    pil_transform = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    model_kwargs = {"label_smoothing": 0.1, "mean": CIFAR_STATS["cifar10"].mean, "std": CIFAR_STATS["cifar10"].std}

    def resident(channels_last: bool) -> Callable[[int], float]:
        def run(batches: int) -> float:
            model = ImageClassifier(augmentation="standard", channels_last=channels_last, **model_kwargs)
            return images_per_second(model, batches, datamodule=datamodule)

        return run

    def pil(workers: int) -> Callable[[int], float]:
        def run(batches: int) -> float:
            loader = DataLoader(
                PILImages(hwc, labels.numpy(), pil_transform),
                batch_size=batch_size,
                shuffle=True,
                num_workers=workers,
                drop_last=False,
            )
            model = ImageClassifier(augmentation="none", **model_kwargs)
            return images_per_second(model, batches, train_dataloaders=loader)

        return run

    return {
        "cpu-full preset (resident uint8 + kornia, channels-last)": resident(True),
        "resident uint8 + kornia, NCHW": resident(False),
        "torchvision DataLoader + PIL, 0 workers": pil(0),
        "torchvision DataLoader + PIL, 2 workers": pil(2),
    }


def alternate(runs: dict[str, Callable[[int], float]], rounds: int, batches: int) -> dict[str, list[float]]:
    """Each arm's training images/s in each of ``rounds`` rounds, the arms taking turns."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(run(batches))
            print(f"{name}: {rates[name][-1]:.1f} images/s", flush=True)
    return rates


def write_report(
    out: Path,
    meta: dict[str, Any],
    rates: dict[str, list[float]],
    baseline: str,
    ratio: tuple[str, str],
    title: str,
    setup: str,
) -> None:
    """Each arm's median, rounds and ratio to arm ``baseline`` (``ratio``: its JSON key and column header) as
    ``<out>.json`` and a Markdown table ``<out>.md`` under ``title`` and ``setup`` (what ran, how), also printed."""
    ratio_key, ratio_header = ratio
    medians = {name: statistics.median(values) for name, values in rates.items()}
    results = {
        name: {
            "images_per_s": round(medians[name], 1),
            "rounds": [round(v, 1) for v in values],
            ratio_key: round(medians[name] / medians[baseline], 2),
        }
        for name, values in rates.items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        setup,
        "",
        f"| arm | training images/s | rounds | {ratio_header} |",
        "|---|---:|---|---:|",
    ]
    lines += [
        f"| {name} | {r['images_per_s']} | {', '.join(map(str, r['rounds']))} | {r[ratio_key]} |"
        for name, r in results.items()
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def machine() -> str:
    """The machine in a few words, with torch's version and threads."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="training batches per epoch (2 epochs per arm)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_training")
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    load_before = os.getloadavg()
    rates = alternate(arms(args.batch_size), args.rounds, args.batches)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    baseline_name = max((name for name in medians if "PIL" in name), key=medians.__getitem__)
    meta = {
        "command": "python benchmarks/bench_cpu_training.py",
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "rounds": args.rounds,
        "batches_per_epoch": args.batches,
        "batch_size": args.batch_size,
        "baseline": baseline_name,
    }
    setup = (
        f"`{meta['command']}`: {meta['machine']}, 1-min load average {meta['load_average_before_after']} "
        f"(before, after). CIFAR-10 ResNet-20, batch {args.batch_size}; per arm the second of two "
        f"{args.batches}-batch training epochs, median of {args.rounds} alternating rounds. Ratios are to the "
        f"faster PIL arm ({baseline_name})."
    )
    write_report(
        args.out,
        meta,
        rates,
        baseline_name,
        ("ratio_to_pil", "ratio to PIL"),
        "CPU training throughput: cpu-full data path vs torchvision DataLoader + PIL",
        setup,
    )


if __name__ == "__main__":
    main()
