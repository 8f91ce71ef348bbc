"""Training-step time of a CIFAR ResNet-20 fed by (a) a torchvision DataLoader with PIL transforms and workers,
against (b) the whole training set held as one uint8 tensor on the device, augmented per batch by
``build_augmentation("standard")`` (kornia).

Both arms do the same augmentation (4-px zero-padded random crop, horizontal flip, normalize) and the same
SGD step on batches of ``--batch-size``. The arms alternate in ``--rounds`` rounds (A B A B ...) so that a change
in machine load hits both; each round times ``--steps`` steps after ``--warmup`` untimed ones, then
``--data-steps`` batches of the input pipeline alone (no model). Results go to
``benchmarks/results/augment_pipeline.{json,md}``.

    python benchmarks/bench_augment_pipeline.py              # CPU, as recorded in the results
    python benchmarks/bench_augment_pipeline.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from invariance_lightning.augment import build_augmentation
from invariance_lightning.models import cifar_resnet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("INVARIANCE_SHARED_DIR", ROOT.parent / "shared")) / "data/cifar10/cifar10_train.npz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

Batch = tuple[torch.Tensor, torch.Tensor]


class PILCifar(Dataset):
    """CIFAR images (uint8, NHWC) served as PIL images through torchvision transforms, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_batches(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> Iterator[Batch]:
    """Arm (a): endless batches from a shuffling DataLoader with PIL transforms, moved to the device."""
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = DataLoader(
        PILCifar(images, labels, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=args.device.type == "cuda",
    )
    while True:
        for x, y in loader:
            yield x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)


def on_device_batches(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> Iterator[Batch]:
    """Arm (b): endless batches indexed out of one uint8 tensor on the device, augmented there with kornia."""
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(args.device)  # (N, 3, 32, 32) uint8
    targets = torch.from_numpy(labels).to(args.device)
    augmentation = build_augmentation("standard", image_size=32, mean=MEAN, std=STD, seed=0).to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(0)
    while True:
        order = torch.randperm(len(data), device=args.device, generator=generator)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[start : start + args.batch_size]
            yield augmentation(data[index], train=True), targets[index]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    batches: Iterator[Batch], step: Callable[[Batch], None], steps: int, warmup: int, device: torch.device
) -> float:
    """Seconds per step, averaged over ``steps`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of arm (a)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per arm and round")
    parser.add_argument("--data-steps", type=int, default=40, help="timed data-only batches per arm and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/augment_pipeline")
    args = parser.parse_args()

    torch.manual_seed(0)
    with np.load(args.data) as archive:
        images, labels = archive["images"], archive["labels"]
    model = cifar_resnet(20).to(args.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def train_step(batch: Batch) -> None:
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def data_only(batch: Batch) -> None:
        del batch

    arms = {
        "torchvision_dataloader": torchvision_batches(images, labels, args),
        "on_device_kornia": on_device_batches(images, labels, args),
    }
    step_times: dict[str, list[float]] = {name: [] for name in arms}
    data_times: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(args.rounds):
        for name, batches in arms.items():
            step_times[name].append(time_steps(batches, train_step, args.steps, args.warmup, args.device))
            # The DataLoader's workers prefetch 2 batches each while the model trains: drain those first.
            data_warmup = args.warmup + 2 * args.workers
            data_times[name].append(time_steps(batches, data_only, args.data_steps, data_warmup, args.device))
            print(f"round {round_index}: {name}: {step_times[name][-1] * 1e3:.1f} ms/step, "
                  f"{data_times[name][-1] * 1e3:.1f} ms/batch data only", flush=True)

    median = {name: statistics.median(times) for name, times in step_times.items()}
    median_data = {name: statistics.median(times) for name, times in data_times.items()}
    a, b = "torchvision_dataloader", "on_device_kornia"
    result = {
        "benchmark": "augment_pipeline",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(args.device),
            "device_name": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "model": "invariance_lightning.models.cifar_resnet(20), SGD(lr=0.1, momentum=0.9, wd=5e-4)",
            "batch_size": args.batch_size,
            "dataloader_workers": args.workers,
            "steps_per_round": args.steps,
            "data_only_batches_per_round": args.data_steps,
            "warmup_steps": args.warmup,
            "rounds": args.rounds,
            "augmentation": "4-px zero-padded random crop 32, horizontal flip, normalize",
        },
        "seconds_per_step": {name: {"median": median[name], "rounds": step_times[name]} for name in arms},
        "seconds_per_batch_data_only": {name: {"median": median_data[name], "rounds": data_times[name]} for name in arms},
        "speedup_on_device_over_dataloader": median[a] / median[b],
        "data_only_speedup_on_device_over_dataloader": median_data[a] / median_data[b],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    args.out.with_suffix(".md").write_text(
        "# Augmentation pipeline benchmark\n\n"
        f"`{result['command']}` on {machine['device_name']} ({machine['platform']}, {machine['cpu_count']} CPUs, "
        f"torch {machine['torch']}, {machine['torch_threads']} threads). ResNet-20 training step, batch "
        f"{args.batch_size}, {args.rounds} alternating rounds of {args.steps} timed steps after {args.warmup} warm-up "
        "steps; medians over rounds.\n\n"
        "| pipeline | ms / training step | ms / batch, data only |\n|---|---:|---:|\n"
        f"| (a) torchvision DataLoader, PIL transforms, {args.workers} workers | {median[a] * 1e3:.1f} | "
        f"{median_data[a] * 1e3:.1f} |\n"
        f"| (b) uint8 tensor on device + kornia `standard` | {median[b] * 1e3:.1f} | {median_data[b] * 1e3:.1f} |\n\n"
        f"Speed-up of (b) over (a): **{result['speedup_on_device_over_dataloader']:.2f}x** per training step, "
        f"{result['data_only_speedup_on_device_over_dataloader']:.2f}x for the input pipeline alone.\n"
    )
    print(json.dumps({k: result[k] for k in ("speedup_on_device_over_dataloader",
                                             "data_only_speedup_on_device_over_dataloader")}))


if __name__ == "__main__":
    main()
