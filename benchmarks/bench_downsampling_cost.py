"""Training cost of every downsampling method and padding of the CIFAR ResNet-20, as ratios in one run.

Each arm is ``cifar_resnet(20, downsample=method, padding_mode=padding)`` trained with plain PyTorch steps (SGD with
momentum, cross-entropy, batch 128 of random 32x32 images, channels-last, 2 torch threads): the network alone, no
data loading or augmentation, so the ratios isolate the layers. Arms take turns over ``--rounds`` rounds (machine
load hits all of them); each round times ``--steps`` steps after 3 warm-up steps and the median is reported.

Ratios: to the strided network at the same padding (the issue's goals: BlurPool >= 0.9, APS >= 0.7, LPS >= 0.5), and
circular to zero padding of the same method (goal >= 0.85). The ``torch-pad`` arms are the circular networks with
every conv back on ``nn.Conv2d(padding_mode="circular")`` (``F.pad`` copy per conv; the implementation before
``CircularConv2d``); the ``strips`` arms take ``circular_conv2d``'s strip path on every map (its implementation
before the padded-copy path for maps of at most ``PADDED_COPY_MAX_PIXELS``). Memory: bytes autograd keeps for the
backward of one step (saved tensors, each storage counted once), the part of training memory that depends on the
layers. FLOPs: the convolutions' and matrix products' floating-point operations of one training step
(``torch.utils.flop_counter``); the strided network's count over an arm's is the speed ratio the arm's definition
allows if time follows those FLOPs, so the measured ratio against it separates inherent cost from implementation.

    python benchmarks/bench_downsampling_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cpu_training import alternate, machine
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from invariance_lightning.models import cifar_resnet
from invariance_lightning.nn import circular
from invariance_lightning.nn.circular import CircularConv2d

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
WARMUP = 3
ARMS: dict[str, tuple[str, str]] = {
    "stride/zeros": ("stride", "zeros"),
    "stride/circular": ("stride", "circular"),
    "stride/circular torch-pad": ("stride", "circular"),
    "stride/circular strips": ("stride", "circular"),
    "blur/zeros": ("blur", "zeros"),
    "blur/circular": ("blur", "circular"),
    "aps/zeros": ("aps", "zeros"),
    "aps/circular": ("aps", "circular"),
    "aps/circular torch-pad": ("aps", "circular"),
    "aps/circular strips": ("aps", "circular"),
    "lps/zeros": ("lps", "zeros"),
    "lps/circular": ("lps", "circular"),
    "afc/circular": ("afc", "circular"),
}


def with_torch_padding(model: nn.Module) -> nn.Module:
    """``model`` with each :class:`CircularConv2d` replaced by ``nn.Conv2d(padding_mode="circular")`` (same
    parameters)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, CircularConv2d):
            plain = nn.Conv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                module.bias is not None,
                "circular",
            )
            plain.weight, plain.bias = module.weight, module.bias
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, plain)
    return model


def build(arm: str) -> nn.Module:
    method, padding = ARMS[arm]
    model = cifar_resnet(20, downsample=method, padding_mode=padding)  # type: ignore[arg-type]
    if arm.endswith("torch-pad"):
        model = with_torch_padding(model)
    return model.to(memory_format=torch.channels_last).train()


@contextmanager
def padded_copy_max_pixels(pixels: int) -> Iterator[None]:
    """``circular_conv2d`` takes its padded-copy path on maps of at most ``pixels`` pixels while training (0: the
    strips on every map), restored on exit."""
    default = circular.PADDED_COPY_MAX_PIXELS
    circular.PADDED_COPY_MAX_PIXELS = pixels
    try:
        yield
    finally:
        circular.PADDED_COPY_MAX_PIXELS = default


def circular_path(arm: str) -> AbstractContextManager[None]:
    """The strip path on every map for the ``strips`` arms, ``circular_conv2d``'s own choice for the others."""
    return padded_copy_max_pixels(0 if arm.endswith("strips") else circular.PADDED_COPY_MAX_PIXELS)


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor
) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), targets).backward()
    optimizer.step()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, 10, (BATCH,))


def timed_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor, steps: int
) -> float:
    """Training images per second over ``steps`` training steps on one batch."""
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, optimizer, images, targets)
    return steps * images.shape[0] / (time.perf_counter() - start)


def images_per_second(arm: str, steps: int) -> float:
    model = build(arm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = batch()
    with circular_path(arm):
        timed_steps(model, optimizer, images, targets, WARMUP)
        return timed_steps(model, optimizer, images, targets, steps)


def saved_bytes(arm: str) -> int:
    """Bytes of the tensors autograd saves for one training step's backward, each storage once."""
    model = build(arm)
    images, targets = batch()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with circular_path(arm), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(model(images), targets)
    loss.backward()
    return sum(storages.values())


def step_flops(arm: str) -> int:
    """Floating-point operations of one training step's convolutions and matrix products, forward and backward
    (``torch.utils.flop_counter``; elementwise work such as BN, ReLU and copies is not counted)."""
    model = build(arm)
    images, targets = batch()
    with circular_path(arm), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), targets).backward()
    return counter.get_total_flops()


def report(
    rates: dict[str, list[float]], memory: dict[str, int], flops: dict[str, int], meta: dict[str, object], out: Path
) -> None:
    medians = {arm: statistics.median(values) for arm, values in rates.items()}
    results = {}
    for arm, (method, padding) in ARMS.items():
        results[arm] = {
            "images_per_s": round(medians[arm], 1),
            "rounds": [round(v, 1) for v in rates[arm]],
            "ratio_to_strided_same_padding": round(medians[arm] / medians[f"stride/{padding}"], 2),
            "ratio_circular_to_zeros": (
                round(medians[arm] / medians[f"{method}/zeros"], 2)
                if padding == "circular" and f"{method}/zeros" in medians
                else None
            ),
            "gflops_per_step": round(flops[arm] / 1e9, 2),
            "flop_bound_to_strided_same_padding": round(flops[f"stride/{padding}"] / flops[arm], 2),
            "saved_mib": round(memory[arm] / 2**20, 1),
            "memory_ratio_to_strided_zeros": round(memory[arm] / memory["stride/zeros"], 2),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        "# Training cost of the downsampling methods and paddings (ResNet-20, CPU)",
        "",
        f"`{meta['command']}`: {meta['machine']}, 1-min load average {meta['load_average_before_after']} (before, "
        f"after). Plain PyTorch training steps, batch {BATCH}, 32x32, channels-last; median of {meta['rounds']} "
        f"alternating rounds of {meta['steps']} steps. FLOP bound: the strided network's convolution and "
        "matrix-product FLOPs per training step (forward and backward) over the arm's, the speed ratio the arm "
        "would reach if time followed those FLOPs. Memory: what autograd saves for one step's backward.",
        "",
        "| arm | training images/s | rounds | ratio to strided (same padding) | FLOP bound | circular / zeros "
        "| GFLOPs / step | saved MiB | memory ratio to stride/zeros |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, row in results.items():
        circular = "" if row["ratio_circular_to_zeros"] is None else row["ratio_circular_to_zeros"]
        lines.append(
            f"| {arm} | {row['images_per_s']} | {', '.join(map(str, row['rounds']))} | "
            f"{row['ratio_to_strided_same_padding']} | {row['flop_bound_to_strided_same_padding']} | {circular} | "
            f"{row['gflops_per_step']} | {row['saved_mib']} | "
            f"{row['memory_ratio_to_strided_zeros']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def step_arguments(description: str, name: str, rounds: int) -> argparse.Namespace:
    """``--rounds``, ``--steps`` and ``--out`` (default ``benchmarks/results/<name>``) of a training-step benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per arm and round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / name)
    return parser.parse_args()


def step_meta(script: str, args: argparse.Namespace, load_before: float) -> dict[str, object]:
    """The command, machine, load and round settings that a training-step benchmark's report records."""
    return {
        "command": f"python benchmarks/{script} --rounds {args.rounds} --steps {args.steps}",
        "machine": machine(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rounds": args.rounds,
        "steps": args.steps,
    }


def main() -> None:
    args = step_arguments(__doc__.splitlines()[0], "downsampling_cost", rounds=3)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    runs: dict[str, Callable[[int], float]] = {arm: partial(images_per_second, arm) for arm in ARMS}
    rates = alternate(runs, args.rounds, args.steps)
    memory = {arm: saved_bytes(arm) for arm in ARMS}
    flops = {arm: step_flops(arm) for arm in ARMS}
    report(rates, memory, flops, step_meta("bench_downsampling_cost.py", args, load_before), args.out)


if __name__ == "__main__":
    main()
