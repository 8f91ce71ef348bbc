"""What fusing buys the alias-free network: eager vs ``torch.compile`` training steps of ResNet-20, in one run.

Each alias-free activation runs on a grid twice as fine, and in eager PyTorch every elementwise step there (the
polynomial, its gradient) is a full pass over memory. ``torch.compile`` (inductor: generated C++ kernels on a CPU)
fuses them, so the compiled alias-free network's ratio to the compiled strided one is closer to what the definition
itself costs (the matrix products of the ideal resampling) than the eager ratio. Arms as in
bench_downsampling_cost.py: ``cifar_resnet(20, downsample=method, padding_mode="circular")``, plain PyTorch training
steps (SGD with momentum, batch 128 of random 32x32 images, channels-last). Each arm's model is built and compiled
once (minutes on 2 cores), warmed up, then timed over ``--rounds`` alternating rounds; the median is reported.

    python benchmarks/bench_alias_free_compile.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from bench_cpu_training import alternate, write_report
from bench_downsampling_cost import WARMUP, batch, step_arguments, step_meta, timed_steps
from torch import nn

from invariance_lightning.models import cifar_resnet

ARMS: dict[str, tuple[str, bool]] = {
    "stride eager": ("stride", False),
    "stride compiled": ("stride", True),
    "afc eager": ("afc", False),
    "afc compiled": ("afc", True),
}


class TimedArm:
    """One arm's model, optimizer and batch, built (and compiled) once; calling it times ``steps`` training steps."""

    def __init__(self, method: str, compiled: bool) -> None:
        model = cifar_resnet(20, downsample=method, padding_mode="circular")  # type: ignore[arg-type]
        model = model.to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.model: nn.Module = torch.compile(model) if compiled else model  # type: ignore[assignment]
        self.images, self.targets = batch()
        started = time.perf_counter()
        timed_steps(self.model, self.optimizer, self.images, self.targets, WARMUP)
        self.warmup_s = time.perf_counter() - started

    def __call__(self, steps: int) -> float:
        return timed_steps(self.model, self.optimizer, self.images, self.targets, steps)


def main() -> None:
    args = step_arguments(__doc__.splitlines()[0], "alias_free_compile", rounds=5)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    arms = {name: TimedArm(method, compiled) for name, (method, compiled) in ARMS.items()}
    runs: dict[str, Callable[[int], float]] = dict(arms)
    rates = alternate(runs, args.rounds, args.steps)
    median = {name: statistics.median(values) for name, values in rates.items()}
    meta = step_meta("bench_alias_free_compile.py", args, load_before) | {
        "warmup_s": {name: round(arm.warmup_s, 1) for name, arm in arms.items()},
        "afc_to_stride_eager": round(median["afc eager"] / median["stride eager"], 2),
        "afc_to_stride_compiled": round(median["afc compiled"] / median["stride compiled"], 2),
    }
    setup = (
        f"`{meta['command']}`: {meta['machine']}, 1-min load average {meta['load_average_before_after']} (before, "
        f"after). ResNet-20, circular padding, plain PyTorch training steps, batch 128, 32x32, channels-last; median "
        f"of {args.rounds} alternating rounds of {args.steps} steps after {WARMUP} warm-up steps (which include "
        f"compiling: {meta['warmup_s']} s). Alias-free to strided: {meta['afc_to_stride_eager']} eager, "
        f"{meta['afc_to_stride_compiled']} compiled."
    )
    title = "Alias-free ResNet-20: eager vs torch.compile training (CPU)"
    write_report(
        args.out, meta, rates, "stride eager", ("ratio_to_stride_eager", "ratio to stride eager"), title, setup
    )


if __name__ == "__main__":
    main()
