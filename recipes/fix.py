"""Make a trained classifier shift-invariant, and show before and after.

The model is a released CIFAR ResNet by name, or an ``ImageClassifier`` checkpoint: a CIFAR ResNet trained on CIFAR,
or a torchvision/timm backbone trained on an ``ImageFolderDataModule`` (e.g. ``configs/imagenette/``), which is
fine-tuned and measured on its own data (its datamodule's settings, read from the checkpoint). Measures the model,
converts it to an antialiased network (its weights kept), fine-tunes it with black-bordered crops
and the consistency penalty, measures it again on the same test images and writes ``summary.md`` (the before/after
table), ``before.md``/``after.md`` (per-step flip rates, the published protocols) and their JSON to ``--output``
(default ``results/fix/<model>_<method>/``). Defaults: the settings of
``configs/cifar10/resnet20_finetuned_blur_consistency_8px.yaml`` (5 epochs, 8-px crop borders, consistency weight 2,
BlurPool), about 20 minutes on a 2-core CPU. Run from the repository root, e.g.::

    python recipes/fix.py --model resnet20
    python recipes/fix.py --model runs/my_run/checkpoints/last.ckpt --method aps --epochs 10
    python recipes/fix.py --model runs/imagenette/resnet18_augmented/checkpoints/last.ckpt --epochs 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from invariance_lightning.augment.consistency import CONSISTENCY_KINDS
from invariance_lightning.lightning.cli import add_protocol_arguments
from invariance_lightning.lightning.fixing import FixSettings, run_fix
from invariance_lightning.models._downsample import ANTIALIAS_METHODS, NETWORK_PADDING_MODES
from invariance_lightning.validation import nonnegative_int, positive_int


def build_parser() -> argparse.ArgumentParser:
    defaults = FixSettings()
    parser = argparse.ArgumentParser(prog="python recipes/fix.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=defaults.model,
        help="a released CIFAR ResNet (resnet20, resnet56) or an ImageClassifier .ckpt: a CIFAR ResNet trained on "
        "CIFAR, or a torchvision/timm backbone trained on an ImageFolderDataModule with a test_dir",
    )
    parser.add_argument(
        "--method",
        choices=ANTIALIAS_METHODS,
        default=defaults.method,
        help="antialiasing (default: blur; afc: alias-free layers, polynomial activations in place of the ReLUs)",
    )
    parser.add_argument(
        "--filter_size",
        type=positive_int,
        help="binomial low-pass length of blur, aps and lps, 1 to 7 (default: the model's own; 3 for a CIFAR ResNet)",
    )
    parser.add_argument(
        "--padding_mode",
        choices=NETWORK_PADDING_MODES,
        help="padding of the convs (default: the model's own, zeros for a released model); circular makes an aps "
        "or lps network exactly invariant to circular shifts, so a zero-filled shift changes its input only by "
        "the content pushed out of the frame",
    )
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument(
        "--max_shift",
        type=nonnegative_int,
        default=defaults.max_shift,
        help="black border of the training crops, px (default: 8)",
    )
    parser.add_argument("--consistency_weight", type=float, default=defaults.consistency_weight)
    parser.add_argument(
        "--consistency_kind",
        choices=CONSISTENCY_KINDS,
        default=defaults.consistency_kind,
        help="divergence of the penalty (default: symmetric_kl)",
    )
    parser.add_argument(
        "--consistency_max_shift",
        type=positive_int,
        default=defaults.consistency_max_shift,
        help="the penalty compares each crop with a further shift of up to this many px per axis (default: 1, "
        "neighbours; 8 pairs shifts across the report protocol's whole walk)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--train_subset", type=positive_int, help="training images (default: all 45,000)")
    parser.add_argument(
        "--val_split",
        type=nonnegative_int,
        default=defaults.val_split,
        help="CIFAR training images held out for validation (default: 5000; an image-folder model keeps its own)",
    )
    parser.add_argument("--test_images", type=positive_int, default=defaults.test_images)
    add_protocol_arguments(parser, "before and after", "the protocols' random shifts", defaults.protocols)
    parser.add_argument(
        "--data_dir",
        type=Path,
        help="CIFAR .npz folder (default: as CIFARDataModule looks); for an image-folder model, its root (default: "
        "the one it was trained on)",
    )
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--output", type=Path, help="default: results/fix/<model>_<method>")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the recipe; returns the path of ``summary.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = FixSettings(
        model=args.model,
        method=args.method,
        filter_size=args.filter_size,
        padding_mode=args.padding_mode,
        epochs=args.epochs,
        max_shift=args.max_shift,
        consistency_weight=args.consistency_weight,
        consistency_kind=args.consistency_kind,
        consistency_max_shift=args.consistency_max_shift,
        lr=args.lr,
        train_subset=args.train_subset,
        val_split=args.val_split,
        test_images=args.test_images,
        protocols=tuple(args.protocols),
        data_dir=args.data_dir,
        download=args.download,
        batch_size=args.batch_size,
        seed=args.seed,
        output=args.output,
        command="python recipes/fix.py " + shlex.join(argv),
    )
    return run_fix(settings)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as error:
        sys.exit(f"fix.py: error: {error}")
