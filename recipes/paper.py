"""Reproduce Azulay & Weiss (JMLR 2019)'s shift/scale measurements for one CIFAR-10 classifier.

For one model (a shared pretrained CIFAR ResNet, or a Lightning checkpoint of ``ImageClassifier``) it measures

1. P(top-1 change) between consecutive frames (flip rate), mean absolute change of the top-1 probability (MAC),
   consistency, accuracy and worst-case accuracy under one-pixel diagonal shift sequences in the paper's
   protocols (crop, black background, zero fill, and circular for reference) and under rescaling
   (``sequence_preset("paper")``);
2. the same on a seeded subset of the model's training images, against the test images (the paper's finding
   that networks are more invariant on images like their training set);
3. the per-layer equivariance profile (:func:`invariance_lightning.diagnostics.layer_equivariance`): stride,
   equivariance error and pooled-feature change under small input shifts, layer by layer.

and writes ``report.md`` (tables, plots, the command), ``report.json`` and PNG plots to ``--output``
(default ``results/paper/<model>/``). What is not found locally (``../shared`` beside the repository,
``$INVARIANCE_SHARED_DIR``, ``$INVARIANCE_DATA_DIR``) is downloaded into ``~/.cache/invariance_lightning``: CIFAR-10
through torchvision, the ResNet-20/56 weights from their GitHub release, checked by sha256 (``--no-download`` forbids
it). Run from the repository root, e.g.::

    python recipes/paper.py --model resnet20 --preset quick
    python recipes/paper.py --checkpoint runs/last.ckpt --preset full
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from invariance_lightning.diagnostics import layer_equivariance
from invariance_lightning.lightning.data import DATA_DIR_ENV
from invariance_lightning.lightning.paper import (
    load_checkpoint_model,
    load_pretrained,
    load_subsets,
    measure_published,
    measure_splits,
    profile_layers,
    shared_root,
)
from invariance_lightning.metrics.gap import train_test_gap
from invariance_lightning.metrics.protocols import PROTOCOLS as PUBLISHED
from invariance_lightning.models import CIFAR_RESNET_DEPTHS
from invariance_lightning.models.pretrained import SHARED_DIR_ENV, WEIGHTS_URL_ENV, weights_cache_dir
from invariance_lightning.reporting.figures import (
    flip_rate_by_sequence_figure,
    layer_profile_figure,
    per_frame_figure,
    save_figures,
    train_test_figure,
)
from invariance_lightning.reporting.machine import machine_info
from invariance_lightning.reporting.paper import paper_report_markdown
from invariance_lightning.reporting.tables import protocols_to_dict, results_to_dict, write_json
from invariance_lightning.transforms import sequence_preset
from invariance_lightning.validation import nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = tuple(f"resnet{depth}" for depth in CIFAR_RESNET_DEPTHS)
PROTOCOLS = tuple(sequence_preset("paper"))
SPLITS = ("test", "train")


@dataclass(frozen=True)
class Sizes:
    """How many images each part of the recipe measures."""

    test: int
    train: int
    layers: int


PRESETS = {"quick": Sizes(test=500, train=500, layers=64), "full": Sizes(test=10_000, train=10_000, layers=512)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/paper.py",
        description="Azulay & Weiss (2019)'s shift/scale invariance measurements for one CIFAR-10 model.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", choices=MODELS, default="resnet20", help="a pretrained CIFAR-10 ResNet (default: resnet20)"
    )
    which.add_argument("--checkpoint", type=Path, help="a Lightning checkpoint of ImageClassifier instead")
    parser.add_argument(
        "--weights-dir", type=Path, default=None,
        help=f"folder with resnet<depth>-*.th, looked in first; then ${SHARED_DIR_ENV}/weights/cifar10-resnet (or "
        f"../shared/weights/cifar10-resnet beside the repository), then the cache {weights_cache_dir()}, where "
        f"resnet20/resnet56 are downloaded (from ${WEIGHTS_URL_ENV} if set) when missing",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help=f"folder with cifar10_{{train,test}}.npz (or its cifar10/, data/cifar10/ subfolders) or torchvision's "
        f"copy (default: ${DATA_DIR_ENV}, else the shared folder, else ~/.cache/invariance_lightning)",
    )
    parser.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=True,
        help="download what is not found locally: CIFAR-10 through torchvision, the pretrained weights from their "
        "GitHub release (default: on; --no-download forbids both)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="sizes: quick (default) = 500 test + 500 train images, 64 for the per-layer profile; "
                        "full = 10,000 + 10,000 and 512")
    parser.add_argument("--num-images", type=positive_int, help="test and train images each (overrides the preset)")
    parser.add_argument("--layer-images", type=positive_int, help="images for the per-layer profile")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS + tuple(PUBLISHED), default=list(PROTOCOLS),
                        help="sequences of sequence_preset('paper') to measure (default: all; at least one), and "
                        "published protocols to run on the test images (invariance_lightning.metrics.protocols)")
    parser.add_argument("--layers", default="blocks",
                        help="'blocks' (first conv, every residual block, the classifier), 'all' (every conv, "
                        "pool, block and the classifier) or comma-separated module names (default: blocks)")
    parser.add_argument("--layer-shifts", type=positive_int, nargs="+", default=[1, 2, 4],
                        help="diagonal input shifts (px) of the per-layer profile; the first also gives the "
                        "equivariance error (default: 1 2 4)")
    parser.add_argument("--layer-mode", choices=("circular", "zeros"), default="circular",
                        help="boundary handling of the per-layer shifts (default: circular)")
    parser.add_argument("--layer-border", type=nonnegative_int, default=0,
                        help="input pixels along each side left out of the equivariance error (default: 0)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the image subsets (default: 0)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="frames per forward pass (default: 256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, help="output folder (default: results/paper/<model>)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the recipe; returns the path of ``report.md``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not set(args.protocols) & set(PROTOCOLS):
        parser.error(f"--protocols needs at least one of {', '.join(PROTOCOLS)} besides published protocols")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    preset = PRESETS[args.preset]
    sizes = Sizes(args.num_images or preset.test, args.num_images or preset.train, args.layer_images or preset.layers)
    shared = shared_root(REPO_ROOT.parent / "shared")
    if args.checkpoint is not None:
        loaded = load_checkpoint_model(args.checkpoint)
    else:
        loaded = load_pretrained(args.model, args.weights_dir, shared, args.download)
    loaded.model.to(args.device)  # layer_model is the model or a part of it
    wanted = {"test": sizes.test, "train": sizes.train}
    subsets, datamodule = load_subsets(loaded, wanted, args.data_dir, shared, args.download, args.seed)
    counts = {split: len(labels) for split, (_, labels) in subsets.items()}
    output = args.output or Path("results") / "paper" / loaded.name
    output.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    layers = layer_equivariance(
        loaded.layer_model, subsets["test"][0][: sizes.layers], profile_layers(loaded.layer_model, args.layers),
        shift=args.layer_shifts[0], pooled_shifts=args.layer_shifts[1:], mode=args.layer_mode,
        border=args.layer_border, normalize=loaded.normalize,
    )
    layer_seconds = time.perf_counter() - tick
    print(f"per-layer profile: {len(layers)} layers, {layers.num_images} images ({layer_seconds:.1f} s)", flush=True)

    sequences = {name: seq for name, seq in sequence_preset("paper").items() if name in args.protocols}
    results, seconds = measure_splits(loaded, subsets, sequences, args.batch_size)
    published, seconds["published"] = measure_published(
        loaded, *subsets["test"], [name for name in args.protocols if name in PUBLISHED], args.seed, args.batch_size)
    gap = train_test_gap(results, counts)

    figures = {
        "flip_rate_by_protocol": flip_rate_by_sequence_figure(sequences, results["test"], "test images"),
        "train_vs_test": train_test_figure(gap, counts),
        "layer_profile": layer_profile_figure(layers),
    }
    for name, sequence in sequences.items():
        figures[f"per_frame_{name}"] = per_frame_figure(
            sequence, {split: results[split][name] for split in SPLITS}, f"{name}: {sequence!r}"
        )
    save_figures(output, figures)

    payload = {
        "command": "python recipes/paper.py " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "model": {"name": loaded.name, "source": loaded.source, "normalize": [list(v) for v in loaded.normalize]},
        "data": {
            "dataset": datamodule.name, "source": datamodule.source, "num_images": counts,
            "image_size": list(subsets["test"][0].shape[-2:]),
            "layer_images": layers.num_images, "train_note": loaded.train_note,
            "datamodule": dict(loaded.datamodule_kwargs),
        },
        "settings": {
            "preset": args.preset, "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
            **machine_info(),
        },
        "seconds": {**seconds, "layers": layer_seconds, "total": time.perf_counter() - started},
        "protocols": {name: repr(seq) for name, seq in sequences.items()},
        "published_protocols": protocols_to_dict(published, args.seed),
        "results": {split: results_to_dict(results[split], sequences) for split in SPLITS},
        "train_test_gap": gap,
        "layers": {
            "shift": list(layers.shift), "mode": layers.mode, "border": layers.border,
            "num_images": layers.num_images, "rows": layers.as_dict(),
        },
        "plots": [f"{name}.png" for name in figures],
    }
    write_json(output / "report.json", payload)
    report = output / "report.md"
    report.write_text(paper_report_markdown(payload, sequences, results, layers))
    print(f"report: {report}")
    return report


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line: :func:`main`, with missing files, failed downloads and bad input reported without a
    traceback (status 1)."""
    try:
        main(argv)
    except (OSError, ValueError) as error:
        sys.exit(f"paper.py: error: {error}")


if __name__ == "__main__":
    cli()
