"""Split a model's shift flips into the move and the lost border content.

The report protocol's zero-filled walk (diagonal 1-px steps 0-8 px) changes two things at each step: the image moves
by one pixel, and one more row and column of content leave the frame. The same walk in ``ShiftSequence``'s ``"mask"``
mode keeps the image in place and only blacks out that content (both walks: ``sequence_preset("content")``). For
each model (a released CIFAR ResNet by name or an ``ImageClassifier`` checkpoint) on the seeded CIFAR-10 test images:
accuracy, the flip rate of both walks with Wilson intervals (each step of each image a trial) and their per-step
rates. A network exactly invariant to circular shifts (APS or LPS with circular padding, in eval mode) flips
identically on both, since a zero-filled frame is the ``torch.roll`` of its masked frame. Writes
``benchmarks/results/<output>.json`` and ``.md``. Example::

    python benchmarks/content_flips.py --models resnet20 resnet56 --num_images 10000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from invariance_lightning import TransformSequence, evaluate_sequences, sequence_preset
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.fixing import load_model
from invariance_lightning.metrics.gap import wilson_interval
from invariance_lightning.reporting.machine import machine_info
from invariance_lightning.reporting.tables import write_json
from invariance_lightning.validation import positive_int

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet20"], help="released CIFAR ResNets by name or ImageClassifier .ckpt"
    )
    parser.add_argument("--num_images", type=positive_int, default=10_000, help="seeded test subset (10000: all)")
    parser.add_argument("--batch_size", type=positive_int, default=256)
    parser.add_argument("--output", default="content_flips")
    args = parser.parse_args()

    datamodule = CIFARDataModule(val_split=0, download=False)
    datamodule.setup("test")
    images, labels = datamodule.split_arrays("test", args.num_images, seed=0)
    sequences = sequence_preset("content")
    walk = sequences["shift"]
    trials = len(images) * (len(walk) - 1)

    rows = {}
    for spec in args.models:
        loaded = load_model(spec, download=False)
        started = time.perf_counter()
        results = evaluate_sequences(
            loaded.model.eval(), images, labels, sequences, batch_size=args.batch_size, normalize=loaded.normalize
        )
        row: dict[str, object] = {
            "seconds": time.perf_counter() - started,
            "accuracy": float(results["shift"]["per_frame_accuracy"][0]),
        }
        for name, result in results.items():
            flips = float(result["flip_rate"])
            row[f"{name}_flip_rate"] = flips
            row[f"{name}_flip_rate_interval"] = wilson_interval(flips, trials)
            row[f"{name}_per_step_flip_rate"] = [float(v) for v in result["per_frame_flip_rate"]]
        rows[spec] = row
        print(f"{spec}: shift {row['shift_flip_rate']:.4f}, masked {row['shift_masked_flip_rate']:.4f}", flush=True)

    command = "python benchmarks/content_flips.py " + shlex.join(sys.argv[1:])
    report = {
        "command": command,
        "num_images": len(images),
        "sequences": {name: repr(sequence) for name, sequence in sequences.items()},
        "machine": machine_info(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{args.output}.json", report)
    (RESULTS / f"{args.output}.md").write_text(markdown(report, walk))
    print(f"wrote {RESULTS / args.output}.md")


def markdown(report: dict[str, Any], walk: TransformSequence) -> str:
    """The benchmark's table and per-step rates."""
    rows, names = report["rows"], list(report["sequences"])
    lines = [
        f"# Shift flips: the move against the lost border content, {report['num_images']:,} CIFAR-10 test images",
        "",
        f"`{report['command']}`",
        "",
        f"`sequence_preset('content')`: `shift` is `{walk!r}`; `shift_masked` the same frames with the image in "
        "place and the content the shift pushes out blacked out (`mode='mask'`). Flip rates with Wilson 95% "
        "intervals, each step of each image a trial.",
        "",
        "| model | accuracy | shift flip rate [95%] | masked-content flip rate [95%] |",
        "|---|---:|---:|---:|",
    ]
    for spec, row in rows.items():
        cells = [
            f"{row[f'{name}_flip_rate']:.4f} [{low:.4f}, {high:.4f}]"
            for name in names
            for low, high in [row[f"{name}_flip_rate_interval"]]
        ]
        lines.append(f"| {spec} | {row['accuracy']:.4f} | {' | '.join(cells)} |")
    lines += ["", "Per-step flip rates (step k: k-1 -> k px):", ""]
    for spec, row in rows.items():
        for name in names:
            lines.append(f"- {spec}, {name}: " + ", ".join(f"{v:.3f}" for v in row[f"{name}_per_step_flip_rate"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
