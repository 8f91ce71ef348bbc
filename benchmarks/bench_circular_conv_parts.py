"""Where a circularly padded conv's training time goes, per ResNet-20 stage, against the zero-padded conv.

For each stage's 3x3 conv (batch 128, channels-last, stride 1: 16 channels at 32x32, 32 at 16x16, 64 at 8x8) it
times the parts of one training step: the zero-padded conv's forward, input gradient and weight gradient (oneDNN pads
internally); the same three parts of the padding-free conv of the wrap-padded copy (what ``circular_conv2d``'s
padded-copy path runs); the copy itself and the fold of its gradient; and the whole step of each path of
``circular_conv2d`` (strips, padded copy) against the zero-padded conv's. Parts take turns over ``--rounds`` rounds
(each the median over rounds of ``--repeats`` calls, in ms), so the split between "the copies" and "the library's
conv on a larger map" is measured in one run. glibc's allocator settings (``MALLOC_*`` variables) go into the
recorded command: the step of the padded-copy path on 32x32 maps depends on them.

    python benchmarks/bench_circular_conv_parts.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cpu_training import machine
from bench_downsampling_cost import padded_copy_max_pixels

from invariance_lightning.nn.circular import _Conv, _unwrap_grad, _wrap_padded, circular_conv2d

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, map size) of ResNet-20's three stages
PADDING = (1, 1)
CONV = _Conv(stride=(1, 1), padding=PADDING, dilation=(1, 1), groups=1)


def milliseconds(call: Callable[[], object], repeats: int) -> float:
    """Mean time of one ``call`` over ``repeats`` calls after 2 warm-up calls."""
    for _ in range(2):
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e3


def training_step(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, path: str) -> None:
    """Forward and backward of one conv: zero-padded (``path="zeros"``) or ``circular_conv2d`` forced onto one path."""
    x.grad = weight.grad = None
    if path == "zeros":
        output = F.conv2d(x, weight, None, 1, PADDING)
    else:
        with padded_copy_max_pixels(0 if path == "strips" else x.shape[-2] * x.shape[-1]):
            output = circular_conv2d(x, weight, None, 1, PADDING)
    output.backward(grad)


def parts(channels: int, size: int) -> dict[str, Callable[[], object]]:
    """The timed calls for one stage's conv."""
    layout = torch.channels_last
    x = torch.randn(BATCH, channels, size, size).contiguous(memory_format=layout)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=layout)
    grad = torch.randn(BATCH, channels, size, size).contiguous(memory_format=layout)
    padded = _wrap_padded(x, PADDING)
    grad_padded = CONV.backward(grad, padded, weight, (0, 0), [True, False, False], False)[0]
    leaf_x, leaf_weight = x.clone().requires_grad_(), weight.clone().requires_grad_()

    def gradient(of: torch.Tensor, padding: tuple[int, int], wanted: str) -> Callable[[], object]:
        mask = [wanted == "input", wanted == "weight", False]
        return lambda: CONV.backward(grad, of, weight, padding, mask, False)

    return {
        "zero-padded conv: forward": lambda: F.conv2d(x, weight, None, 1, PADDING),
        "zero-padded conv: input gradient": gradient(x, PADDING, "input"),
        "zero-padded conv: weight gradient": gradient(x, PADDING, "weight"),
        "conv of the padded copy: forward": lambda: F.conv2d(padded, weight, None, 1, 0),
        "conv of the padded copy: input gradient": gradient(padded, (0, 0), "input"),
        "conv of the padded copy: weight gradient": gradient(padded, (0, 0), "weight"),
        "wrap-padded copy": lambda: _wrap_padded(x, PADDING),
        "fold of the copy's gradient (and a clone)": lambda: _unwrap_grad(
            grad_padded.clone(), PADDING, x.shape[-2:], layout
        ),
        "training step: zero padding": lambda: training_step(leaf_x, leaf_weight, grad, "zeros"),
        "training step: circular, strips": lambda: training_step(leaf_x, leaf_weight, grad, "strips"),
        "training step: circular, padded copy": lambda: training_step(leaf_x, leaf_weight, grad, "copy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="calls per part and round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "circular_conv_parts")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    for channels, size in STAGES:
        calls = parts(channels, size)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                times[name].append(milliseconds(call, args.repeats))
        results[f"{channels} channels, {size}x{size}"] = {
            name: round(statistics.median(values), 3) for name, values in times.items()
        }
    allocator = "".join(f"{name}={value} " for name, value in sorted(os.environ.items()) if name.startswith("MALLOC_"))
    command = (
        f"{allocator}python benchmarks/bench_circular_conv_parts.py --rounds {args.rounds} --repeats {args.repeats}"
    )
    if args.out.name != "circular_conv_parts":
        command += f" --out benchmarks/results/{args.out.name}"
    meta = {"command": command, "machine": machine(), "batch": BATCH}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    stages = list(results)
    lines = [
        "# A circularly padded 3x3 conv's training time, part by part (CPU)",
        "",
        f"`{command}`: {meta['machine']}. Batch {BATCH}, channels-last, stride 1, in ms: median over the rounds of "
        "the mean per call. The step ratios are zero padding's step time over the circular path's.",
        "",
        "| part | " + " | ".join(stages) + " |",
        "|---|" + "---:|" * len(stages),
    ]
    lines += [f"| {name} | " + " | ".join(str(results[stage][name]) for stage in stages) + " |" for name in calls]
    for path in ("strips", "padded copy"):
        ratios = [
            round(results[stage]["training step: zero padding"] / results[stage][f"training step: circular, {path}"], 2)
            for stage in stages
        ]
        lines.append(f"| step ratio, zero padding / circular {path} | " + " | ".join(map(str, ratios)) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
