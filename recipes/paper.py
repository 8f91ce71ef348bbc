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
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from invariance_lightning import evaluate_invariance, sequence_preset
from invariance_lightning.reporting.figures import per_frame_figure
from invariance_lightning.lightning.data import CIFAR_STATS, DATA_DIR_ENV, CIFARDataModule
from invariance_lightning.diagnostics import EquivarianceReport, default_layers, layer_equivariance
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.metrics.evaluate import Normalization
from invariance_lightning.models import CIFAR_RESNET_DEPTHS, PRETRAINED_CIFAR_RESNETS, cifar_resnet_weights
from invariance_lightning.models.pretrained import WEIGHTS_URL_ENV, DownloadError, weights_cache_dir
from invariance_lightning.reporting.tables import per_frame_markdown, results_to_dict, summary_markdown
from invariance_lightning.transforms import ShiftSequence, TransformSequence

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "INVARIANCE_SHARED_DIR"
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

#: What each protocol of ``sequence_preset("paper")`` does (its repr in the report gives the numbers).
PROTOCOL_NOTES = {
    "shift_zeros": "the whole image moves diagonally in 1-px steps; vacated pixels are black",
    "shift_crop": "a smaller window moves diagonally over the image (the paper's crop protocol): no invented "
    "pixels, but the model sees inputs smaller than the 32x32 it was trained on",
    "shift_embed": "the image is shrunk (antialiased) onto a black canvas of the original size and moves inside "
    "it (the paper's black-background protocol): every frame shows the whole object",
    "shift_circular": "wrap-around shifts (torch.roll), for reference: no border at all",
    "scale": "rescaled about the centre (bilinear, antialiased when shrinking), black padding or centre crop back "
    "to 32x32; consecutive frames differ by one step of the scale factor",
}

#: Metrics compared between training and test images, with their labels.
GAP_METRICS = {"flip_rate": "flip rate", "worst_case_accuracy": "worst-case accuracy", "accuracy": "accuracy"}

DEFINITIONS = """\
- **flip rate**: P(top-1 prediction changes between consecutive frames), over all images and consecutive frame
  pairs (the paper's "P(top-1 change)").
- **MAC**: mean absolute change of the probability of the previous frame's top-1 class between consecutive frames.
- **consistency**: fraction of all frame pairs (not only consecutive ones) with the same top-1 prediction.
- **top5_distance**: mean number of the 5 top-5 rank positions whose class changes between consecutive frames
  (0 to 5).
- **accuracy**: top-1 accuracy averaged over all frames; **worst-case accuracy**: fraction of images classified
  correctly in every frame.
- The ± bound is `2 * sqrt(p (1 - p) / n)` (for a difference, the two combined in quadrature): each image
  contributes a value in [0, 1], whose variance is at most p (1 - p), so this is a conservative ~95% interval for
  sampling images."""


@dataclass
class LoadedModel:
    """A model ready to measure, and what the report says about it."""

    name: str
    model: nn.Module
    layer_model: nn.Module
    normalize: Normalization
    source: str
    datamodule_kwargs: dict[str, Any]
    train_note: str


def default_weights_dir() -> Path:
    """``$INVARIANCE_SHARED_DIR/weights/cifar10-resnet``, else ``../shared/weights/cifar10-resnet`` beside the repo."""
    return shared_root() / "weights" / "cifar10-resnet"


def shared_root() -> Path:
    return Path(os.environ[SHARED_ENV]) if os.environ.get(SHARED_ENV) else REPO_ROOT.parent / "shared"


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/paper.py",
        description="Azulay & Weiss (2019)'s shift/scale invariance measurements for one CIFAR-10 model.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", choices=MODELS, default="resnet20", help="a pretrained CIFAR-10 ResNet (default: resnet20)")
    which.add_argument("--checkpoint", type=Path, help="a Lightning checkpoint of ImageClassifier instead")
    parser.add_argument(
        "--weights-dir", type=Path, default=None,
        help=f"folder with resnet<depth>-*.th, looked in first; then ${SHARED_ENV}/weights/cifar10-resnet (or "
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
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="which sequences of sequence_preset('paper') to measure (default: all)")
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


# -- model and data ------------------------------------------------------------------------------------------------
def load_model(args: argparse.Namespace) -> LoadedModel:
    """The pretrained ResNet named by ``--model``, or the ``--checkpoint``; clear errors when files are missing."""
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint)
    folders = [args.weights_dir] if args.weights_dir is not None else []
    try:
        path = cifar_resnet_weights(args.model, search_dirs=[*folders, default_weights_dir()], download=args.download)
    except (FileNotFoundError, DownloadError) as err:
        origin = f"from ${SHARED_ENV}" if os.environ.get(SHARED_ENV) else "../shared beside the repository"
        fixes = [f"pass --weights-dir FOLDER with {args.model}-<hash>.th (e.g. resnet20-12fca82f.th)",
                 f"set {SHARED_ENV} to the folder holding weights/cifar10-resnet/ (now: {shared_root()}, {origin})"]
        if args.model in PRETRAINED_CIFAR_RESNETS:
            fixes.append("download it (drop --no-download)" if not args.download else "retry on a machine with "
                         f"internet access, or set {WEIGHTS_URL_ENV} to a mirror of the release")
        fixes.append("measure your own model with --checkpoint PATH")
        raise type(err)(f"{err}\nFix it: " + "; or ".join(fixes) + ".") from err
    loaded = load_classifier(path)
    return LoadedModel(
        name=args.model,
        model=loaded.model,
        layer_model=loaded.model,
        normalize=loaded.normalize,
        source=str(path),
        datamodule_kwargs={"name": "cifar10", "val_split": 0},
        train_note="the pretrained weights were trained on all 50,000 CIFAR-10 training images",
    )


def load_checkpoint(path: Path) -> LoadedModel:
    """An ``ImageClassifier`` checkpoint; its datamodule's hyperparameters (if saved) define its training images."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file (give a Lightning .ckpt of ImageClassifier)")
    if path.suffix != ".ckpt":
        raise ValueError(
            f"--checkpoint {path}: expected a Lightning .ckpt of ImageClassifier; for pretrained CIFAR ResNet weights "
            "use --model resnet<depth> with --weights-dir"
        )
    # Datamodules given a pathlib folder save it in their hyperparameters; a path is safe to unpickle.
    with torch.serialization.safe_globals([type(Path())]):
        saved = torch.load(path, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters") or {}
    loaded = load_classifier(path)  # allow-lists paths itself (nesting safe_globals would drop the outer list)
    name = saved.get("name") if saved else "cifar10"
    if name not in CIFAR_STATS:
        raise ValueError(
            f"--checkpoint {path} was trained with a datamodule other than CIFARDataModule (dataset name {name!r}); "
            "this recipe measures CIFAR-10/100 models"
        )
    model = loaded.model
    classes = {"cifar10": 10, "cifar100": 100}[name]
    if model.hparams.num_classes != classes:
        raise ValueError(
            f"--checkpoint {path} has num_classes={model.hparams.num_classes}, but its data, {name}, has {classes}"
        )
    # without explicit mean/std the classifier used its datamodule's statistics
    normalize = loaded.normalize if model.hparams.mean is not None else CIFAR_STATS[name]
    kwargs = {"name": name, "val_split": saved.get("val_split", 0), "seed": saved.get("seed", 0),
              "train_subset": saved.get("train_subset")}
    if saved:
        note = (f"the checkpoint's own training split: its datamodule's val_split={kwargs['val_split']!r}, "
                f"seed={kwargs['seed']}, train_subset={kwargs['train_subset']!r} are reapplied")
    else:
        note = "all training images (the checkpoint saved no datamodule hyperparameters, so a validation hold-out, " \
               "if any, cannot be excluded)"
    return LoadedModel(
        name=path.stem,
        model=model,
        layer_model=getattr(model, "backbone", model),
        normalize=normalize,
        source=str(path),
        datamodule_kwargs=kwargs,
        train_note=note,
    )


def default_data_dir() -> Path | None:
    """``None`` when ``$INVARIANCE_DATA_DIR`` is set (the datamodule reads it), else the shared folder if present."""
    if os.environ.get(DATA_DIR_ENV):
        return None
    shared = shared_root() / "data"
    return shared if shared.is_dir() else None


def load_images(
    args: argparse.Namespace, loaded: LoadedModel, sizes: Sizes
) -> tuple[dict[str, tuple[Tensor, Tensor]], CIFARDataModule]:
    """Seeded subsets ``{"test": (images, labels), "train": ...}`` (uint8), at most the split's size."""
    datamodule = CIFARDataModule(
        data_dir=args.data_dir or default_data_dir(), download=args.download, **loaded.datamodule_kwargs
    )
    try:
        datamodule.setup()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}\nWith this recipe: pass --data-dir FOLDER, set {DATA_DIR_ENV} (or {SHARED_ENV} to the folder "
            "holding data/cifar10/), or run it on a machine with internet access without --no-download."
        ) from err
    subsets = {}
    for split, wanted in (("test", sizes.test), ("train", sizes.train)):
        available = datamodule.split_size(split)
        if wanted > available:
            print(f"note: {split} split has {available} images; measuring all of them instead of {wanted}")
        subsets[split] = datamodule.split_arrays(split, min(wanted, available), seed=args.seed)
    return subsets, datamodule


def profile_layers(model: nn.Module, choice: str) -> list[str]:
    """Layer names for ``--layers``: 'blocks' keeps the first and last of :func:`default_layers` and every block."""
    if choice == "all":
        return default_layers(model)
    if choice != "blocks":
        return [name.strip() for name in choice.split(",") if name.strip()]
    names = default_layers(model)
    modules = dict(model.named_modules())
    blocks = [name for name in names if next(modules[name].children(), None) is not None]
    return list(dict.fromkeys([names[0], *blocks, names[-1]])) if names else []


# -- measuring -----------------------------------------------------------------------------------------------------
def measure_protocols(
    loaded: LoadedModel,
    subsets: Mapping[str, tuple[Tensor, Tensor]],
    sequences: Mapping[str, TransformSequence],
    batch_size: int,
) -> tuple[dict[str, dict[str, dict[str, Tensor]]], dict[str, float]]:
    """``{split: {protocol: metrics}}`` and the seconds each split took."""
    results: dict[str, dict[str, dict[str, Tensor]]] = {}
    seconds = {}
    for split, (images, labels) in subsets.items():
        started = time.perf_counter()
        results[split] = {}
        for name, sequence in sequences.items():
            tick = time.perf_counter()
            metrics = evaluate_invariance(
                loaded.model, images, labels, sequence, batch_size=batch_size, normalize=loaded.normalize
            )
            results[split][name] = metrics
            print(
                f"{split:5s} {name:15s} flip rate {float(metrics['flip_rate']):.4f}  "
                f"worst-case acc {float(metrics['worst_case_accuracy']):.4f}  ({time.perf_counter() - tick:.1f} s)",
                flush=True,
            )
        seconds[split] = time.perf_counter() - started
    return results, seconds


def bound(p: float, n: int) -> float:
    """Conservative standard error of a mean of ``n`` per-image values in [0, 1] with mean ``p``."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def train_test_gap(
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]], counts: Mapping[str, int]
) -> dict[str, dict[str, dict[str, float | bool]]]:
    """``{protocol: {metric: {train, test, difference (test - train), bound (2 sigma), significant}}}``."""
    gap: dict[str, dict[str, dict[str, float | bool]]] = {}
    for protocol in results["test"]:
        gap[protocol] = {}
        for metric in GAP_METRICS:
            train, test = (float(results[split][protocol][metric]) for split in ("train", "test"))
            width = 2 * math.hypot(bound(train, counts["train"]), bound(test, counts["test"]))
            gap[protocol][metric] = {
                "train": train, "test": test, "difference": test - train, "bound": width,
                "significant": abs(test - train) > width,
            }
    return gap


# -- plots ---------------------------------------------------------------------------------------------------------
def flip_rate_figure(sequences: Mapping[str, TransformSequence], results: Mapping[str, Mapping[str, Tensor]]) -> Figure:
    """Per-frame flip rate (from the previous frame) of every protocol: shifts on one axes, scalings on another."""
    groups = {"shift": [n for n, s in sequences.items() if isinstance(s, ShiftSequence)]}
    groups["scale"] = [n for n in sequences if n not in groups["shift"]]
    groups = {kind: names for kind, names in groups.items() if names}
    fig = Figure(figsize=(5.2 * len(groups), 3.6), dpi=100, layout="constrained")
    for ax, (kind, names) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items()):
        for name in names:
            values = sequences[name].frame_values[1:]
            ax.plot(values, results[name]["per_frame_flip_rate"].tolist(), marker="o", label=name)
        ax.set(title=f"P(top-1 change) per {kind} step", xlabel=sequences[names[0]].axis_label,
               ylabel="flip rate from the previous frame", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("test images")
    return fig


def train_test_figure(
    gap: Mapping[str, Mapping[str, Mapping[str, float | bool]]], counts: Mapping[str, int]
) -> Figure:
    """Grouped bars per protocol: each gap metric on training vs test images, with 2-sigma bounds as error bars."""
    protocols = list(gap)
    fig = Figure(figsize=(4.2 * len(GAP_METRICS), 3.6), dpi=100, layout="constrained")
    positions = torch.arange(len(protocols), dtype=torch.float64)
    for ax, (metric, label) in zip(fig.subplots(1, len(GAP_METRICS), squeeze=False)[0], GAP_METRICS.items()):
        for offset, split in ((-0.2, "train"), (0.2, "test")):
            values = [gap[p][metric][split] for p in protocols]
            errors = [2 * bound(v, counts[split]) for v in values]
            ax.bar((positions + offset).tolist(), values, width=0.4, label=split, yerr=errors, capsize=2)
        ax.set_xticks(positions.tolist(), protocols, rotation=30, ha="right", fontsize="small")
        ax.set(title=label, ylim=(0, None))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    return fig


def layer_figure(report: EquivarianceReport) -> Figure:
    """Pooled-feature change (per shift) and equivariance error (first shift) against depth."""
    rows = list(report)
    labels = [f"{row.name or '(model)'}" + (f" /{row.stride[0]:g}" if row.stride else "") for row in rows]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(8.0, 0.55 * len(rows) + 3), 4.2), dpi=100, layout="constrained")
    pooled_ax, error_ax = fig.subplots(1, 2, sharex=True)
    for shift in dict.fromkeys(s for row in rows for s in row.pooled_change_by_shift):
        pooled_ax.plot(x, [row.pooled_change_by_shift.get(shift, math.nan) for row in rows], marker="o",
                       label=f"shift ({shift[0]},{shift[1]})")
    error_ax.plot(x, [row.equivariance_error for row in rows], marker="s", linestyle="none", color="tab:red")
    pooled_ax.set(title="pooled-feature change", ylabel="||g(shifted x) - g(x)|| / ||g(x)||", ylim=(0, None))
    error_ax.set(title=f"equivariance error, shift ({report.shift[0]},{report.shift[1]}), border {report.border} px",
                 ylabel="relative L2 error", ylim=(0, None))
    for ax in (pooled_ax, error_ax):
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize="small")
        ax.grid(alpha=0.3)
    pooled_ax.legend(fontsize="small")
    fig.suptitle(f"{report.mode} input shifts, {report.num_images} test images; tick labels: layer /cumulative "
                 "stride; no error where the feature shift is fractional", fontsize="medium")
    return fig


# -- report --------------------------------------------------------------------------------------------------------
def finite_or_none(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (``json`` would write invalid ``NaN`` tokens)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def gap_markdown(gap: Mapping[str, Mapping[str, Mapping[str, float | bool]]]) -> str:
    lines = ["| protocol | metric | train | test | test - train | ± bound | beyond bound |", "|---|---|---:|---:|---:|---:|---|"]
    for protocol, metrics in gap.items():
        for metric, v in metrics.items():
            lines.append(
                f"| {protocol} | {GAP_METRICS[metric]} | {v['train']:.4f} | {v['test']:.4f} | {v['difference']:+.4f} "
                f"| {v['bound']:.4f} | {'yes' if v['significant'] else 'no'} |"
            )
    return "\n".join(lines)


def write_report(output: Path, payload: dict[str, Any], sequences: Mapping[str, TransformSequence],
                 results: Mapping[str, Mapping[str, Mapping[str, Tensor]]], layers: EquivarianceReport) -> Path:
    """``report.md`` from the measured results and the JSON payload's settings."""
    counts, model = payload["data"]["num_images"], payload["model"]
    interleaved = {f"{name} ({split})": results[split][name] for name in sequences for split in ("train", "test")}
    protocol_lines = [f"- **{name}** (`{sequence!r}`): {PROTOCOL_NOTES.get(name, '')}"
                      for name, sequence in sequences.items()]
    parts = [
        f"# Azulay & Weiss (2019) measurements: {model['name']}",
        f"Model `{model['source']}`, inputs normalized with mean {model['normalize'][0]} and std "
        f"{model['normalize'][1]}. Data: {payload['data']['dataset']} from `{payload['data']['source']}`; "
        f"{counts['test']} test and {counts['train']} training images (seeded subsets, seed {payload['settings']['seed']}); "
        f"training images: {payload['data']['train_note']}. Device {payload['settings']['device']}, "
        f"{payload['settings']['threads']} torch threads, {payload['seconds']['total']:.0f} s in total.",
        "```\n" + payload["command"] + "\n```",
        "## 1. Shift and scale consistency (test images)",
        "\n".join(protocol_lines),
        summary_markdown(results["test"]),
        "![flip rate per frame](flip_rate_by_protocol.png)",
        "## 2. Training vs test images",
        "The paper finds networks more invariant on images like their training set. Same protocols, "
        f"{counts['train']} training vs {counts['test']} test images:",
        summary_markdown(interleaved),
        gap_markdown(payload["train_test_gap"]),
        "![train vs test](train_vs_test.png)",
        "## 3. Per-layer equivariance profile",
        f"{layers.num_images} test images, {layers.mode} diagonal input shifts, border {layers.border} px left out of "
        "the equivariance error (`invariance_lightning.diagnostics.layer_equivariance`; see docs/diagnostics.md). "
        "A layer of cumulative stride k can at best be equivariant to shifts that are multiples of k; n/a marks a "
        "fractional feature shift. Unless the border covers the shift plus the layer's receptive-field radius, the "
        "error of a zero-padded network includes the band where its padding meets the shifted image border "
        "(`--layer-border 8` leaves it out for ResNet-20's layer1).",
        layers.to_markdown(digits=3),
        "![per-layer profile](layer_profile.png)",
        "## Per-frame results",
    ]
    for name, sequence in sequences.items():
        parts += [f"### {name}", f"![{name}](per_frame_{name}.png)", "Test images:",
                  per_frame_markdown(results["test"][name], sequence)]
    parts += ["## Definitions", DEFINITIONS]
    path = output / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the recipe; returns the path of ``report.md``."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    preset = PRESETS[args.preset]
    sizes = Sizes(args.num_images or preset.test, args.num_images or preset.train, args.layer_images or preset.layers)
    loaded = load_model(args)
    loaded.model.to(args.device)  # layer_model is the model or a part of it
    subsets, datamodule = load_images(args, loaded, sizes)
    counts = {split: len(labels) for split, (_, labels) in subsets.items()}
    output = args.output or Path("results") / "paper" / loaded.name
    output.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    layer_images = subsets["test"][0][: sizes.layers]
    layers = layer_equivariance(
        loaded.layer_model, layer_images, profile_layers(loaded.layer_model, args.layers),
        shift=args.layer_shifts[0], pooled_shifts=args.layer_shifts[1:], mode=args.layer_mode,
        border=args.layer_border, normalize=loaded.normalize,
    )
    layer_seconds = time.perf_counter() - tick
    print(f"per-layer profile: {len(layers)} layers, {layers.num_images} images ({layer_seconds:.1f} s)", flush=True)

    sequences = {name: seq for name, seq in sequence_preset("paper").items() if name in args.protocols}
    results, seconds = measure_protocols(loaded, subsets, sequences, args.batch_size)
    gap = train_test_gap(results, counts)

    figures = {
        "flip_rate_by_protocol": flip_rate_figure(sequences, results["test"]),
        "train_vs_test": train_test_figure(gap, counts),
        "layer_profile": layer_figure(layers),
    }
    for name, sequence in sequences.items():
        figures[f"per_frame_{name}"] = per_frame_figure(
            sequence, {split: results[split][name] for split in ("test", "train")}, f"{name}: {sequence!r}"
        )
    for name, figure in figures.items():
        figure.savefig(output / f"{name}.png")

    payload = {
        "command": "python recipes/paper.py " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "model": {"name": loaded.name, "source": loaded.source, "normalize": [list(v) for v in loaded.normalize]},
        "data": {
            "dataset": datamodule.name, "source": datamodule.source, "num_images": counts,
            "layer_images": layers.num_images, "train_note": loaded.train_note,
            "datamodule": dict(loaded.datamodule_kwargs),
        },
        "settings": {
            "preset": args.preset, "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "seconds": {**seconds, "layers": layer_seconds, "total": time.perf_counter() - started},
        "protocols": {name: repr(seq) for name, seq in sequences.items()},
        "results": {split: results_to_dict(results[split], sequences) for split in SPLITS},
        "train_test_gap": gap,
        "layers": {
            "shift": list(layers.shift), "mode": layers.mode, "border": layers.border,
            "num_images": layers.num_images, "rows": layers.as_dict(),
        },
        "plots": [f"{name}.png" for name in figures],
    }
    (output / "report.json").write_text(json.dumps(finite_or_none(payload), indent=1, allow_nan=False))
    report = write_report(output, payload, sequences, results, layers)
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
