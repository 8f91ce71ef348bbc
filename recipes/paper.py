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
from collections.abc import Sequence
from pathlib import Path

import torch

from invariance_lightning.lightning.paper import PAPER_PRESETS, PAPER_SEQUENCES, PaperSettings, run_paper
from invariance_lightning.locations import DATA_DIR_ENV, SHARED_DIR_ENV
from invariance_lightning.metrics.protocols import PROTOCOLS as PUBLISHED
from invariance_lightning.models import CIFAR_RESNET_DEPTHS
from invariance_lightning.models.pretrained import WEIGHTS_URL_ENV, weights_cache_dir
from invariance_lightning.validation import nonnegative_int, positive_int

MODELS = tuple(f"resnet{depth}" for depth in CIFAR_RESNET_DEPTHS)


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
        "--weights_dir",
        "--weights-dir",
        type=Path,
        default=None,
        help=f"folder with resnet<depth>-*.th, looked in first; then ${SHARED_DIR_ENV}/weights/cifar10-resnet (or "
        f"../shared/weights/cifar10-resnet beside the repository), then the cache {weights_cache_dir()}, where "
        f"resnet20/resnet56 are downloaded (from ${WEIGHTS_URL_ENV} if set) when missing",
    )
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder with cifar10_{{train,test}}.npz (or its cifar10/, data/cifar10/ subfolders) or torchvision's "
        f"copy (default: ${DATA_DIR_ENV}, else the shared folder, else ~/.cache/invariance_lightning)",
    )
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download what is not found locally: CIFAR-10 through torchvision, the pretrained weights from their "
        "GitHub release (default: on; --no-download forbids both)",
    )
    quick, full = PAPER_PRESETS["quick"], PAPER_PRESETS["full"]
    parser.add_argument(
        "--preset",
        choices=sorted(PAPER_PRESETS),
        default="quick",
        help=f"sizes: quick (default) = {quick.test} test + {quick.train} train images, {quick.layers} "
        f"for the per-layer profile; full = {full.test:,} + {full.train:,} and {full.layers}, and "
        "every published protocol",
    )
    parser.add_argument(
        "--num_images", "--num-images", type=positive_int, help="test and train images each (overrides the preset)"
    )
    parser.add_argument("--layer_images", "--layer-images", type=positive_int, help="images for the per-layer profile")
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=PAPER_SEQUENCES + tuple(PUBLISHED),
        default=None,
        help="sequences of sequence_preset('paper') to measure (at least one), and published "
        "protocols to run on the test images (invariance_lightning.metrics.protocols) (default: "
        "every sequence, plus every published protocol with --preset full)",
    )
    parser.add_argument(
        "--layers",
        default="blocks",
        help="'blocks' (first conv, every residual block, the classifier), 'all' (every conv, "
        "pool, block and the classifier) or comma-separated module names (default: blocks)",
    )
    parser.add_argument(
        "--layer_shifts",
        "--layer-shifts",
        type=positive_int,
        nargs="+",
        default=[1, 2, 4],
        help="diagonal input shifts (px) of the per-layer profile; the first also gives the "
        "equivariance error (default: 1 2 4)",
    )
    parser.add_argument(
        "--layer_mode",
        "--layer-mode",
        choices=("circular", "zeros"),
        default="circular",
        help="boundary handling of the per-layer shifts (default: circular)",
    )
    parser.add_argument(
        "--layer_border",
        "--layer-border",
        type=nonnegative_int,
        default=0,
        help="input pixels along each side left out of the equivariance error (default: 0)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the image subsets (default: 0)")
    parser.add_argument(
        "--batch_size", "--batch-size", type=positive_int, default=256, help="frames per forward pass (default: 256)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, help="output folder (default: results/paper/<model>)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the recipe; returns the path of ``report.md``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python recipes/paper.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    settings = PaperSettings(
        model=args.model,
        checkpoint=args.checkpoint,
        weights_dir=args.weights_dir,
        data_dir=args.data_dir,
        download=args.download,
        preset=args.preset,
        num_images=args.num_images,
        layer_images=args.layer_images,
        protocols=None if args.protocols is None else tuple(args.protocols),
        layers=args.layers,
        layer_shifts=tuple(args.layer_shifts),
        layer_mode=args.layer_mode,
        layer_border=args.layer_border,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        command=command,
    )
    try:
        settings.chosen_protocols()  # the one check of the protocol choice, reported as a usage error
    except ValueError as error:
        parser.error(str(error))
    return run_paper(settings)


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line: :func:`main`, with missing files, failed downloads and bad input reported without a
    traceback (status 1)."""
    try:
        main(argv)
    except (OSError, ValueError) as error:
        sys.exit(f"paper.py: error: {error}")


if __name__ == "__main__":
    cli()
