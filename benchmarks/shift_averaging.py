"""Test-time shift averaging (``models.ShiftAveraging``) against the plain model: flips, consistency, accuracy, cost.

The inference-time fix of issue 24 beside the training-time ones of docs/results.md: the released CIFAR-10 ResNet-20
(or any CIFAR ResNet weights / released name / ``ImageClassifier`` checkpoint) on the CIFAR-10 test images, measured
with the report protocol (``sequence_preset("report")["shift"]``: diagonal 1-px steps 0-8 px, zero fill) and
``aps2021_standard``, plain and wrapped in ``ShiftAveraging`` over each shift set. Rates come with Wilson intervals;
the cost is the measured time of each model relative to the plain one in the same run (and ``k``, the forward passes
per image, by construction).
Writes ``benchmarks/results/<output>.json`` and ``.md``. Example::

    python benchmarks/shift_averaging.py --weights resnet20 --num_images 10000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from invariance_lightning import ShiftAveraging, evaluate_invariance, evaluate_protocol, sequence_preset
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.lightning.paper import load_checkpoint_model
from invariance_lightning.metrics.gap import wilson_interval
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, STRIDE2_SHIFTS, load_cifar_resnet
from invariance_lightning.reporting.tables import write_json
from invariance_lightning.validation import positive_int

RESULTS = Path(__file__).resolve().parent / "results"
#: Shift sets by name: no shift (with ``--hflip``: the image and its mirror), the four phases of a stride-2
#: subsampling, and the 3 x 3 neighbourhood.
SHIFT_SETS = {
    "identity": ((0, 0),),
    "stride2_phases": STRIDE2_SHIFTS,
    "neighbourhood_3x3": tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default="resnet20",
        help="weights file, released model name (resnet20) or ImageClassifier .ckpt (its own normalization)",
    )
    parser.add_argument("--num_images", type=positive_int, default=10_000, help="seeded test subset (10000: all)")
    parser.add_argument(
        "--shift_sets", nargs="+", choices=sorted(SHIFT_SETS), default=["stride2_phases", "neighbourhood_3x3"]
    )
    parser.add_argument(
        "--hflip", action="store_true", help="average each shift set over the mirrored copies too (twice the passes)"
    )
    parser.add_argument(
        "--boundary",
        choices=("reflect", "circular"),
        default="reflect",
        help="what enters at the border of each shifted copy (default: reflect)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=256, help="frames per forward of the plain model")
    parser.add_argument("--output", default="shift_averaging")
    args = parser.parse_args()

    datamodule = CIFARDataModule(val_split=0, download=False)
    datamodule.setup("test")
    images, labels = datamodule.split_arrays("test", args.num_images, seed=0)
    if args.weights.endswith(".ckpt"):  # an ImageClassifier: its own normalization and architecture
        loaded = load_checkpoint_model(Path(args.weights))
        model, normalize = loaded.model.eval(), loaded.normalize
    else:
        model, normalize = load_cifar_resnet(args.weights, download=False).eval(), CIFAR_RESNET_NORMALIZE
    sequence = sequence_preset("report")["shift"]
    models = {"plain": (model, 1)}
    for name in args.shift_sets:
        averaged = ShiftAveraging(model, SHIFT_SETS[name], boundary=args.boundary, hflip=args.hflip)
        models[f"{name}{' + hflip' if args.hflip else ''} (k={averaged.copies})"] = (averaged, averaged.copies)

    rows = {}
    for name, (candidate, copies) in models.items():
        started = time.perf_counter()
        shift = evaluate_invariance(
            candidate,
            images,
            labels,
            sequence,
            batch_size=max(1, args.batch_size // copies),
            normalize=normalize,
        )
        standard = evaluate_protocol(
            candidate,
            images,
            labels,
            "aps2021_standard",
            seed=0,
            normalize=normalize,
            batch_size=max(1, args.batch_size // copies),
        )
        seconds = time.perf_counter() - started
        pairs = len(images) * (len(sequence) - 1)
        rows[name] = {
            "forward_passes_per_image": copies,
            "seconds": seconds,
            "accuracy": float(shift["per_frame_accuracy"][0]),
            "flip_rate": float(shift["flip_rate"]),
            "flip_rate_interval": wilson_interval(float(shift["flip_rate"]), pairs),
            "per_step_flip_rate": [float(v) for v in shift["per_frame_flip_rate"]],
            "worst_case_accuracy": float(shift["worst_case_accuracy"]),
            "aps2021_standard": standard["consistency"],
            "aps2021_standard_interval": wilson_interval(standard["consistency"], len(images)),
        }
        print(
            f"{name}: {rows[name]['flip_rate']:.4f} flips, {rows[name]['aps2021_standard']:.4f} aps2021_standard, "
            f"{seconds:.0f} s",
            flush=True,
        )
    for row in rows.values():
        row["time_ratio"] = row["seconds"] / rows["plain"]["seconds"]

    command = "python benchmarks/shift_averaging.py " + shlex.join(sys.argv[1:])
    report = {
        "command": command,
        "weights": str(args.weights),
        "num_images": len(images),
        "sequence": repr(sequence),
        "boundary": args.boundary,
        "hflip": args.hflip,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{args.output}.json", report)
    lines = [
        f"# Test-time shift averaging on {len(images):,} CIFAR-10 test images ({args.weights})",
        "",
        f"`{command}`",
        "",
        f"Report protocol `{sequence!r}`; `aps2021_standard` consistency; shifted copies with `{args.boundary}` "
        f"borders{'; each copy also mirrored left-right (hflip)' if args.hflip else ''}. Intervals: Wilson 95%. "
        "Time: measured in this run, relative to the plain model.",
        "",
        "| model | forward passes / image | accuracy | flip rate [95%] | worst-case accuracy | aps2021_standard [95%] "
        "| time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        flips, standard = row["flip_rate_interval"], row["aps2021_standard_interval"]
        lines.append(
            f"| {name} | {row['forward_passes_per_image']} | {row['accuracy']:.4f} | {row['flip_rate']:.4f} "
            f"[{flips[0]:.4f}, {flips[1]:.4f}] | {row['worst_case_accuracy']:.4f} | {row['aps2021_standard']:.4f} "
            f"[{standard[0]:.4f}, {standard[1]:.4f}] | {row['time_ratio']:.2f} |"
        )
    lines += ["", "Per-step flip rates (step k: shift k-1 -> k px):", ""]
    for name, row in rows.items():
        lines.append(f"- {name}: " + ", ".join(f"{v:.3f}" for v in row["per_step_flip_rate"]))
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.output}.md")


if __name__ == "__main__":
    main()
