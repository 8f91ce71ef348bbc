"""Training-step time of a CIFAR ResNet-20 fed by (a) a torchvision DataLoader with PIL transforms and workers,
against (b) the whole training set held as one uint8 tensor on the device, augmented per batch by
``build_augmentation("standard")`` (kornia).

Both arms do the same augmentation (4-px zero-padded random crop, horizontal flip, normalize) and the same SGD step
on batches of ``--batch-size``. The arms alternate in ``--rounds`` rounds (A B A B ...) so that a change in machine
load hits both; each round times ``--steps`` training steps (wall clock) after ``--warmup`` untimed ones, then
``--data-steps`` batches of each input pipeline alone, in this process (the DataLoader with ``num_workers=0``), as
wall clock and CPU time. On a shared machine wall clock is noisy (the 1-min load average is recorded); the CPU time
of the pipeline alone is not inflated by waiting for a core.

On a busy machine use ``--threads 1``: with more intra-op threads than free cores, every small parallel op waits for
a descheduled thread, which penalizes pipelines made of many small ops like (b) unfairly. At a load average of about
4.5 on 2 cores, (b) alone took 61 ms of CPU per batch with the default 2 threads and 7 ms with ``--threads 1``.
Results go to ``benchmarks/results/augment_pipeline.{json,md}``.

    python benchmarks/bench_augment_pipeline.py --threads 1  # CPU, as recorded in the results
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


def torchvision_batches(
    images: np.ndarray, labels: np.ndarray, workers: int, args: argparse.Namespace
) -> Iterator[Batch]:
    """Arm (a): endless batches from a shuffling DataLoader with PIL transforms, moved to the device."""
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = DataLoader(
        PILCifar(images, labels, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
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
) -> tuple[float, float]:
    """(wall, CPU of this process) seconds per step, averaged over ``steps`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(next(batches))
    synchronize(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def summary(times: list[float]) -> dict[str, float | list[float]]:
    return {"min": min(times), "median": statistics.median(times), "rounds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of arm (a) in the training steps")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per arm and round")
    parser.add_argument("--data-steps", type=int, default=30, help="timed pipeline-only batches per arm and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads of this process (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/augment_pipeline")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
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

    def pipeline_only(batch: Batch) -> None:
        del batch

    a, b = "torchvision_dataloader", "on_device_kornia"
    training = {a: torchvision_batches(images, labels, args.workers, args), b: on_device_batches(images, labels, args)}
    pipelines = {a: torchvision_batches(images, labels, 0, args), b: on_device_batches(images, labels, args)}
    step_wall: dict[str, list[float]] = {a: [], b: []}
    pipe_wall: dict[str, list[float]] = {a: [], b: []}
    pipe_cpu: dict[str, list[float]] = {a: [], b: []}
    for round_index in range(args.rounds):
        for name in (a, b):
            step_wall[name].append(time_steps(training[name], train_step, args.steps, args.warmup, args.device)[0])
            wall, cpu = time_steps(pipelines[name], pipeline_only, args.data_steps, args.warmup, args.device)
            pipe_wall[name].append(wall)
            pipe_cpu[name].append(cpu)
            print(
                f"round {round_index}: {name}: {step_wall[name][-1] * 1e3:.1f} ms/step; pipeline alone "
                f"{wall * 1e3:.1f} ms/batch wall, {cpu * 1e3:.1f} ms/batch CPU",
                flush=True,
            )

    def ratio(times: dict[str, list[float]], stat: Callable[[list[float]], float]) -> float:
        return stat(times[a]) / stat(times[b])

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
            "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        },
        "settings": {
            "model": "invariance_lightning.models.cifar_resnet(20), SGD(lr=0.1, momentum=0.9, wd=5e-4)",
            "augmentation": "4-px zero-padded random crop 32, horizontal flip, normalize",
            "batch_size": args.batch_size,
            "dataloader_workers_in_training": args.workers,
            "dataloader_workers_pipeline_alone": 0,
            "training_steps_per_round": args.steps,
            "pipeline_batches_per_round": args.data_steps,
            "warmup_steps": args.warmup,
            "rounds": args.rounds,
        },
        "training_step_wall_seconds": {name: summary(step_wall[name]) for name in (a, b)},
        "pipeline_alone_wall_seconds_per_batch": {name: summary(pipe_wall[name]) for name in (a, b)},
        "pipeline_alone_cpu_seconds_per_batch": {name: summary(pipe_cpu[name]) for name in (a, b)},
        "speedup_training_step": {"min": ratio(step_wall, min), "median": ratio(step_wall, statistics.median)},
        "speedup_pipeline_alone_cpu": {"min": ratio(pipe_cpu, min), "median": ratio(pipe_cpu, statistics.median)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({key: result[key] for key in ("speedup_training_step", "speedup_pipeline_alone_cpu")}))


def markdown(result: dict) -> str:
    """The results as a short Markdown report."""
    machine, settings = result["machine"], result["settings"]
    step, wall, cpu = (
        result[key]
        for key in (
            "training_step_wall_seconds",
            "pipeline_alone_wall_seconds_per_batch",
            "pipeline_alone_cpu_seconds_per_batch",
        )
    )
    rows = {
        "torchvision_dataloader": "(a) torchvision DataLoader, PIL transforms "
        f"({settings['dataloader_workers_in_training']} workers in training, in-process alone)",
        "on_device_kornia": "(b) uint8 tensor on the device + kornia `standard`",
    }
    table = "".join(
        f"| {label} | {step[name]['min'] * 1e3:.0f} / {step[name]['median'] * 1e3:.0f} | "
        f"{wall[name]['median'] * 1e3:.1f} | {cpu[name]['median'] * 1e3:.1f} |\n"
        for name, label in rows.items()
    )
    load = machine["load_average_1min_before_after"]
    return (
        "# Augmentation pipeline benchmark\n\n"
        f"`{result['command']}` on {machine['device_name']} ({machine['platform']}, {machine['cpu_count']} CPUs, torch "
        f"{machine['torch']}, {machine['torch_threads']} threads; 1-min load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after). ResNet-20 SGD step on batches of {settings['batch_size']} real CIFAR-10 training "
        f"images; {settings['rounds']} alternating rounds of {settings['training_steps_per_round']} timed steps and "
        f"{settings['pipeline_batches_per_round']} pipeline-only batches, after {settings['warmup_steps']} warm-up "
        "steps each.\n\n"
        "| pipeline | ms / training step (min / median over rounds) | ms / batch, pipeline alone, wall (median) "
        "| ms / batch, pipeline alone, CPU (median) |\n|---|---:|---:|---:|\n"
        f"{table}\n"
        f"Speed-up of (b) over (a) per training step: **{result['speedup_training_step']['min']:.2f}x** (min), "
        f"{result['speedup_training_step']['median']:.2f}x (median); CPU cost of the input pipeline alone: "
        f"(b) needs {1 / result['speedup_pipeline_alone_cpu']['median']:.2f}x the CPU time of (a) (median).\n"
    )


if __name__ == "__main__":
    main()
