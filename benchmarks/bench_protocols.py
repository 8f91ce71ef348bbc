"""Measure the shared pretrained CIFAR ResNets with every published shift-invariance protocol, and its speed.

For each model and protocol: the protocol's numbers on the CIFAR-10 test set (the AFC grids, 1960 forward
passes per image, on a seeded subset), and the images forwarded per second, against ``evaluate_invariance``
with a 9-frame diagonal ``ShiftSequence`` timed just before and just after it (so both see the same load on a
shared machine). Writes ``benchmarks/results/protocols.json`` and ``.md``. Example::

    python benchmarks/bench_protocols.py --shared ../shared --depths 20 56 --afc-images 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from invariance_lightning.lightning.data import read_cifar_npz
from invariance_lightning.metrics import PROTOCOLS, evaluate_invariance, evaluate_protocol
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, load_cifar_resnet
from invariance_lightning.transforms import ShiftSequence

WEIGHTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
RESULTS = Path(__file__).resolve().parent / "results"
KEYS = (
    "consistency",
    "flip_probability",
    "accuracy",
    "adversarial_integer",
    "adversarial_half_pixel",
    "adversarial_crop",
)


class ForwardClock:
    """A ``forward_fn`` that also adds up the seconds spent inside the model's forward pass."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, model, x):
        started = time.perf_counter()
        out = model(x)
        self.seconds += time.perf_counter() - started
        return out


def timed(function, *args, **kwargs):
    """``(result, seconds, share of the seconds inside the model's forward)`` of ``function(..., forward_fn=...)``."""
    clock = ForwardClock()
    started = time.perf_counter()
    out = function(*args, **kwargs, forward_fn=clock)
    seconds = time.perf_counter() - started
    return out, seconds, clock.seconds / seconds


def forward_sweep(model: torch.nn.Module, sizes: list[int]) -> dict[int, float]:
    """Images per second of ``model``'s bare forward pass at each batch size (median of 3 alternating rounds)."""
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    with torch.no_grad():
        for _ in range(3):
            for size in sizes:
                x = torch.randn(size, 3, 32, 32)
                model(x)  # warm-up for this shape
                _, seconds, _ = timed(lambda forward_fn: forward_fn(model, x))
                rates[size].append(size / seconds)
    return {size: sorted(values)[1] for size, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--num-images", type=int, default=10000, help="test images for all but the AFC grids")
    parser.add_argument("--afc-images", type=int, default=64, help="seeded subset of test images for the AFC grids")
    parser.add_argument("--reference-images", type=int, default=512, help="images per evaluate_invariance timing")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--forward-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also time the bare model forward at these batch sizes (images/s, median of 3)",
    )
    parser.add_argument("--output", default="protocols")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = read_cifar_npz(args.shared / "data" / "cifar10" / "cifar10_test.npz", num_classes=10)
    images = torch.from_numpy(test.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(test.labels)
    # the file is sorted by class: a seeded shuffle picks the subsets (and keeps every image for 10000)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    normalize = tuple(CIFAR_RESNET_NORMALIZE)
    reference_sequence = ShiftSequence(max_shift=8)

    report: dict = {
        "command": "python benchmarks/bench_protocols.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "shared"
        ),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "models": {},
    }
    rows = []
    for depth in args.depths:
        model = load_cifar_resnet(args.shared / "weights" / "cifar10-resnet" / WEIGHTS[depth])
        report["models"][f"resnet{depth}"] = entries = {}

        def reference_rate() -> tuple[float, float]:
            count = args.reference_images
            _, seconds, in_forward = timed(
                evaluate_invariance,
                model,
                images[:count],
                labels[:count],
                reference_sequence,
                batch_size=args.batch_size,
                normalize=normalize,
            )
            return count * len(reference_sequence) / seconds, in_forward

        before = reference_rate()
        for name in args.protocols:
            protocol = PROTOCOLS[name]
            count = args.afc_images if name == "afc2023_adversarial" else args.num_images
            results, seconds, in_forward = timed(
                evaluate_protocol,
                model,
                images[:count],
                labels[:count],
                name,
                normalize=normalize,
                seed=args.seed,
                batch_size=args.batch_size,
            )
            after = reference_rate()
            rate, reference = count * protocol.frames_per_image / seconds, (before[0] + after[0]) / 2
            reference_in_forward = (before[1] + after[1]) / 2
            # the same frames forwarded in the same batch shapes cost the same, so the time outside the forward pass
            # is what a protocol can add; comparing shares cancels load changes between the timings
            normalized = in_forward / reference_in_forward
            before = after
            entries[name] = {
                "definition": protocol.description,
                "source": protocol.source,
                "images": count,
                "results": results,
                "seconds": round(seconds, 1),
                "forwards_per_s": round(rate, 1),
                "evaluate_invariance_forwards_per_s": round(reference, 1),
                "ratio": round(rate / reference, 3),
                "share_in_forward": round(in_forward, 4),
                "evaluate_invariance_share_in_forward": round(reference_in_forward, 4),
                "ratio_of_shares": round(normalized, 3),
            }
            numbers = ", ".join(f"{k} {100 * results[k]:.2f}%" for k in KEYS if k in results)
            rows.append(
                f"| ResNet-{depth} | `{name}` | {count} | {numbers} | {rate:.0f} | {reference:.0f} | "
                f"{rate / reference:.2f} | {100 * in_forward:.1f}% | {100 * reference_in_forward:.1f}% | "
                f"{normalized:.3f} |"
            )
            print(rows[-1], flush=True)
    weights = args.shared / "weights" / "cifar10-resnet" / WEIGHTS[args.depths[0]]
    sweep = forward_sweep(load_cifar_resnet(weights).eval(), args.forward_sizes)
    report["forward_images_per_s"] = sweep
    markdown = [
        "# Published shift-invariance protocols on the shared pretrained CIFAR ResNets",
        "",
        f"`{report['command']}` ({report['machine']}, torch {report['torch']})",
        "",
        "Numbers in percent. Speed: images forwarded per second by the protocol, and by `evaluate_invariance` with "
        f"`ShiftSequence(max_shift=8)` (9 frames) on {args.reference_images} images, timed just before and just "
        "after the protocol (mean of the two rates); ratio >= 1: the protocol forwards at least as fast. On a "
        "shared machine the load changes between timings, so each run also records the share of its time spent "
        "inside the model's forward pass (a timing `forward_fn`); the ratio of shares (protocol / "
        "evaluate_invariance) compares the cost per forward with the load cancelled: >= 1 means the protocol adds "
        "no more work around each forward than evaluate_invariance does.",
        "",
        "| model | protocol | images | results | forwards/s | evaluate_invariance forwards/s | ratio "
        "| time in forward | evaluate_invariance time in forward | ratio of shares |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    if sweep:
        markdown += [
            f"Bare forward pass of ResNet-{args.depths[0]} (random inputs, no_grad, median of 3) by batch size: on "
            "this CPU the rate drops between 504 and 512 frames per forward, so a protocol whose chunks fill "
            "`--batch-size 512` exactly (2 or 16 frames per image) is compared with 504-frame chunks of the 9-frame "
            "reference.",
            "",
            "| frames per forward | images/s |",
            "|---:|---:|",
            *(f"| {size} | {rate:.0f} |" for size, rate in sweep.items()),
            "",
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"{args.output}.md").write_text("\n".join(markdown))


if __name__ == "__main__":
    main()
