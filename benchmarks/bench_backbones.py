"""Throughput of plain vs antialiased backbones (BlurPool, APS), as ratios to the plain model.

Measures training (forward + backward + SGD step, train mode) and inference (eval mode,
``torch.inference_mode``) images/s of:

* CIFAR ResNet-20 at 32 px: ``cifar_resnet(20, downsample="stride" | "blur" | "aps")``;
* torchvision ResNet-18 (10 classes) at 64 px: plain, ``antialias(..., "blur")`` (stem conv kept
  strided, the default), ``antialias(..., "blur", stem_conv=True)`` and ``antialias(..., "aps")``;

each in the default (NCHW) and ``channels_last`` memory formats. Variants are timed in
interleaved rounds (every variant once per round); images/s come from the median round and each
ratio is the median over rounds of that round's ratio, so that drifting load on a shared machine
affects a variant and its baseline alike. Writes
``benchmarks/results/backbones.json`` and ``.md``.

    python benchmarks/bench_backbones.py --device cpu --batch-size 64 --iters 3 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from invariance_lightning.models import antialias, cifar_resnet

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def build_models() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    """name -> (factory, input size); the first of each family is that family's baseline."""
    resnet18 = lambda: torchvision.models.resnet18(num_classes=10)  # noqa: E731
    return {
        "resnet20/plain": (lambda: cifar_resnet(20), 32),
        "resnet20/blur": (lambda: cifar_resnet(20, downsample="blur"), 32),
        "resnet20/aps": (lambda: cifar_resnet(20, downsample="aps"), 32),
        "resnet18/plain": (resnet18, 64),
        "resnet18/blur": (lambda: antialias(resnet18(), "blur"), 64),
        "resnet18/blur+stem": (lambda: antialias(resnet18(), "blur", stem_conv=True), 64),
        "resnet18/aps": (lambda: antialias(resnet18(), "aps"), 64),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, size: int, batch: int, device: torch.device, fmt: torch.memory_format, train: bool):
    """A closure running one training or inference step on a fixed random batch."""
    model = model.to(device=device, memory_format=fmt).train(train)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (batch,), device=device)
    if not train:

        def infer() -> None:
            with torch.inference_mode():
                model(images)

        return infer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return train_step


def measure(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    device = torch.device(args.device)
    models = build_models()
    cases = [(name, fmt, mode) for mode in ("train", "infer") for fmt in args.formats for name in models]
    steps = {}
    for name, fmt, mode in cases:
        factory, size = models[name]
        torch.manual_seed(0)
        steps[(name, fmt, mode)] = make_step(factory(), size, args.batch_size, device, FORMATS[fmt], mode == "train")
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    seconds: dict[tuple[str, str, str], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            _sync(device)
            seconds[case].append((time.perf_counter() - start) / args.iters)

    def ratio(baseline: tuple[str, str, str], case: tuple[str, str, str]) -> float:
        return statistics.median(b / c for b, c in zip(seconds[baseline], seconds[case]))

    rows = []
    for name, fmt, mode in cases:
        family = name.split("/")[0]
        rows.append(
            {
                "model": name,
                "input_px": models[name][1],
                "memory_format": fmt,
                "mode": mode,
                "images_per_s": args.batch_size / statistics.median(seconds[(name, fmt, mode)]),
                "ratio_to_plain": ratio((f"{family}/plain", fmt, mode), (name, fmt, mode)),
                "speedup_vs_contiguous": (
                    ratio((name, "contiguous", mode), (name, fmt, mode)) if "contiguous" in args.formats else None
                ),
            }
        )
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": rows,
    }


def to_markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    load = [f"{v:.1f}" for v in (*machine["load_average_at_start"], *machine["load_average_at_end"])]
    lines = [
        "# Backbone throughput: plain vs antialiased",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs ({machine['torch_threads']} torch threads), "
        f"device {machine['device']}, torch {machine['torch']}; load average (1/5/15 min) "
        f"{'/'.join(load[:3])} at start, {'/'.join(load[3:])} at end.",
        f"Settings: batch {settings['batch_size']}, {settings['iters']} steps x {settings['rounds']} interleaved "
        f"rounds, {settings['warmup']} warm-up steps; images/s from the median round, ratios are medians of "
        "per-round ratios.",
        "",
        "Command: `python benchmarks/bench_backbones.py " + " ".join(settings["argv"]) + "`",
        "",
        "| model | px | format | mode | images/s | ratio to plain | vs contiguous |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["results"]:
        versus = "" if row["speedup_vs_contiguous"] is None else f"{row['speedup_vs_contiguous']:.2f}x"
        lines.append(
            f"| {row['model']} | {row['input_px']} | {row['memory_format']} | {row['mode']} | "
            f"{row['images_per_s']:.0f} | {row['ratio_to_plain']:.2f}x | {versus} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=["contiguous", "channels_last"])
    parser.add_argument("--out", type=Path, default=RESULTS / "backbones")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
