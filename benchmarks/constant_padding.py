"""What ``export.constant_padding`` costs a trained BlurPool model: accuracy and shift consistency, reflect vs zeros.

Runtimes such as TensorRT refuse reflect padding, so the deployable variant pads BlurPool's border with zeros. This
measures the same trained weights both ways on seeded CIFAR-10 test images with the report protocol (diagonal 1-px
steps 0-8 px, zero fill) and ``aps2021_standard``, with Wilson intervals. Writes
``benchmarks/results/<output>.{json,md}``. Example::

    python benchmarks/constant_padding.py --checkpoint runs/cpu-full/cifar10/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from invariance_lightning import evaluate_invariance, evaluate_protocol, sequence_preset
from invariance_lightning.export import constant_padding
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.lightning.data import CIFARDataModule
from invariance_lightning.metrics.gap import wilson_interval
from invariance_lightning.reporting.tables import write_json
from invariance_lightning.validation import positive_int

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an ImageClassifier .ckpt with BlurPool")
    parser.add_argument("--num_images", type=positive_int, default=2000, help="seeded test subset (10000: all)")
    parser.add_argument("--output", default="constant_padding")
    args = parser.parse_args()

    datamodule = CIFARDataModule(val_split=0, download=False)
    datamodule.setup("test")
    images, labels = datamodule.split_arrays("test", args.num_images, seed=0)
    loaded = load_classifier(args.checkpoint)
    variants = {"reflect (as trained)": loaded.model, "zeros (constant_padding)": constant_padding(loaded.model)}
    sequence = sequence_preset("report")["shift"]
    rows = {}
    for name, model in variants.items():
        shift = evaluate_invariance(model.eval(), images, labels, sequence, normalize=loaded.normalize)
        standard = evaluate_protocol(model, images, labels, "aps2021_standard", seed=0, normalize=loaded.normalize)
        pairs = len(images) * (len(sequence) - 1)
        rows[name] = {
            "accuracy": float(shift["per_frame_accuracy"][0]),
            "accuracy_interval": wilson_interval(float(shift["per_frame_accuracy"][0]), len(images)),
            "flip_rate": float(shift["flip_rate"]),
            "flip_rate_interval": wilson_interval(float(shift["flip_rate"]), pairs),
            "aps2021_standard": standard["consistency"],
            "aps2021_standard_interval": wilson_interval(standard["consistency"], len(images)),
        }
        print(name, rows[name], flush=True)
    command = "python benchmarks/constant_padding.py " + shlex.join(sys.argv[1:])
    write_json(RESULTS / f"{args.output}.json", {"command": command, "num_images": len(images), "rows": rows})
    lines = [
        f"# BlurPool padding of a trained model: reflect vs zeros ({len(images):,} CIFAR-10 test images)",
        "",
        f"`{command}`",
        "",
        f"Report protocol `{sequence!r}`; `aps2021_standard` consistency. Intervals: Wilson 95%.",
        "",
        "| BlurPool padding | accuracy [95%] | flip rate [95%] | aps2021_standard [95%] |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        cells = [
            f"{row[key]:.4f} [{row[key + '_interval'][0]:.4f}, {row[key + '_interval'][1]:.4f}]"
            for key in ("accuracy", "flip_rate", "aps2021_standard")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.output}.md")


if __name__ == "__main__":
    main()
