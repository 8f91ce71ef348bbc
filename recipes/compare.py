"""Train the variants of a config family and compare their accuracy and shift/scale invariance side by side.

For each variant (``configs/<family>/<label>_<variant>.yaml``) the recipe

1. trains it through the project's own CLI (``invariance-lightning fit``, in-process), on a copy of the config whose
   run directory is moved under ``--runs_dir``, with the size preset's overrides on the command line; with
   ``--reuse`` a run whose ``last.ckpt`` already covers the epochs is read instead, and a run stopped before its
   ``max_epochs`` is resumed (``--ckpt_path last``; a finished run cannot be extended: its one-cycle schedule is
   fixed by ``max_epochs``);
2. evaluates ``last.ckpt`` with the full protocol (``sequence_preset("report")``: diagonal shifts 0..8 px and
   scales 0.8..1.2) on the test split (a seeded subset below ``--preset full``), and with the published protocols
   named by ``--protocols`` (``invariance_lightning.metrics.protocols``, one column per number);
3. reads the ``InvarianceMonitor``'s last flip rates (train vs val subset) from ``last.ckpt`` and the last
   epoch's ``train/images_per_second`` from the run's ``metrics.csv``;

and writes ``comparison.md``, ``comparison.csv``, ``comparison.json``, a record per variant
(``variants/<variant>.json``: with ``--reuse`` it stands for a finished run, even in a clone without the run) and
PNG plots to ``--output``
(default ``results/compare_<family>_<preset>``); the tables are rewritten after every variant. With W&B enabled
(offline unless you are logged in) the training runs and a summary run with the table and plots share one W&B group.
Run from the repository root, e.g.::

    python recipes/compare.py --preset quick --no_wandb          # smoke run: ~11 min on 2 CPU cores (docs/recipes.md)
    python recipes/compare.py --preset cpu --variants all        # 20 epochs on 5,000 images: docs/results.md
    python recipes/compare.py --preset cpu-full --reuse --variants augmented augmented_blur_consistency \
        --runs_dir runs/cpu-full --output benchmarks/results/compare_cifar10_cpu-full   # 45,000 images, 15 epochs
    python recipes/compare.py --preset full --reuse              # the configs' schedules, for a GPU
    python recipes/compare.py --family imagenette --variants plain blur --preset full
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from invariance_lightning.lightning.cli import add_protocol_arguments
from invariance_lightning.lightning.comparison import (
    COMPARISON_PRESETS,
    FAMILIES,
    MAIN_VARIANTS,
    ComparisonSettings,
    plan_comparison,
    run_comparison,
)
from invariance_lightning.validation import positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/compare.py",
        description="Train the variants of a config family and compare their accuracy and shift/scale invariance.",
    )
    parser.add_argument(
        "--family", default="cifar10", choices=sorted(FAMILIES), help="configs/<family>/ (default: cifar10)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"variants to compare, or 'all' (default: those of {list(MAIN_VARIANTS)} the family has)",
    )
    parser.add_argument(
        "--preset",
        default="quick",
        choices=list(COMPARISON_PRESETS),
        help="default quick; " + "; ".join(f"{name}: {p.describe()}" for name, p in COMPARISON_PRESETS.items()),
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help="the most epochs a variant trains (default: the preset's); a config planned for fewer, "
        "such as a fine-tuning run, keeps its own",
    )
    parser.add_argument(
        "--train_subset", "--train-subset", type=positive_int, help="override the preset's training images"
    )
    parser.add_argument("--test_images", "--test-images", type=positive_int, help="override the preset's test images")
    parser.add_argument(
        "--monitor_samples",
        "--monitor-samples",
        type=positive_int,
        help="override the InvarianceMonitor's num_samples (images per split it measures each epoch)",
    )
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        type=Path,
        default=None,
        help="the data, or a folder holding data/<name>/ (default: $INVARIANCE_DATA_DIR for CIFAR "
        "when set, else ../shared beside the repository when it has the data, else the config's)",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: results/compare_<family>_<preset>")
    parser.add_argument(
        "--runs_dir",
        "--runs-dir",
        type=Path,
        default=None,
        help="training runs go to <runs_dir>/<family>/<config name> (default: runs for --preset "
        "full, the configs' own run folders; <output>/runs otherwise)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use runs whose last.ckpt covers the epochs; resume runs stopped before their "
        "max_epochs (--ckpt_path last)",
    )
    parser.add_argument("--no_wandb", "--no-wandb", action="store_true", help="CSV logs only, no W&B runs")
    add_protocol_arguments(parser, "on the test images", "the test subset and of the protocols' random shifts")
    parser.add_argument(
        "--batch_size",
        "--batch-size",
        type=positive_int,
        default=256,
        help="frames per evaluation forward pass (default: 256)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the comparison; returns the path of ``comparison.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    threads = options.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    settings = ComparisonSettings(REPO_ROOT, command="python recipes/compare.py " + shlex.join(argv), **options)
    try:
        plan = plan_comparison(settings)  # unknown variants, existing runs: reported before anything trains
    except ValueError as error:
        parser.error(str(error))
    report = run_comparison(plan)
    print(f"comparison written to {report}")
    return report


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as error:  # missing data: the datamodule's message says where it looked and what to do
        sys.exit(f"compare.py: error: {error}")
