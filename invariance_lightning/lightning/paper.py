"""The Azulay & Weiss (2019) reproduction: the package half of ``recipes/paper.py`` (docs/recipes.md).

:func:`run_paper` does the whole job for :class:`PaperSettings`: loading a pretrained CIFAR ResNet (found locally or
downloaded) or an ``ImageClassifier`` checkpoint, the test and training images it is measured on (the training
images being those the checkpoint was trained on where its datamodule saved how it split them), measuring them
(:func:`measure_splits`, :func:`measure_published`, :func:`profile_layers`) with the torch-only
:func:`~invariance_lightning.metrics.evaluate.evaluate_sequences`, the published protocols and
:func:`~invariance_lightning.diagnostics.layer_equivariance`, and writing the report. Error messages name the
recipe's options that fix them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from invariance_lightning.diagnostics import default_layers, layer_equivariance
from invariance_lightning.lightning.checkpoint import checkpoint_name, load_classifier, read_checkpoint
from invariance_lightning.lightning.data import CIFAR_NUM_CLASSES, CIFAR_STATS, DATA_DIR_ENV, CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.locations import SHARED_DIR_ENV, shared_dir_origin
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.metrics.gap import train_test_gap
from invariance_lightning.metrics.protocols import PROTOCOLS
from invariance_lightning.metrics.published import evaluate_protocols
from invariance_lightning.models import PRETRAINED_CIFAR_RESNETS, cifar_resnet_weights
from invariance_lightning.models.pretrained import WEIGHTS_URL_ENV, DownloadError
from invariance_lightning.reporting.figures import (
    flip_rate_by_sequence_figure,
    layer_profile_figure,
    per_frame_figure,
    save_figures,
    train_test_figure,
)
from invariance_lightning.reporting.machine import machine_info
from invariance_lightning.reporting.paper import paper_report_markdown
from invariance_lightning.reporting.tables import protocol_line, protocols_to_dict, results_to_dict, write_json
from invariance_lightning.transforms import TransformSequence, sequence_preset
from invariance_lightning.transforms.normalization import Normalization
from invariance_lightning.validation import check_choice

#: The splits measured, in report order.
SPLITS = ("test", "train")
#: The sequences of the paper's protocols (``sequence_preset("paper")``), by name.
PAPER_SEQUENCES = tuple(sequence_preset("paper"))


@dataclass(frozen=True)
class PaperSizes:
    """What a preset measures: test and training images, images of the per-layer profile, and the published
    protocols (:data:`~invariance_lightning.metrics.protocols.PROTOCOLS`) run on the test images by default."""

    test: int
    train: int
    layers: int
    published: tuple[str, ...] = ()


#: ``quick``: a first look in under half a minute on a 2-core CPU (300 + 300 images, the paper's sequences);
#: ``full``: the whole test set, 10,000 training images and every published protocol.
PAPER_PRESETS = {
    "quick": PaperSizes(test=300, train=300, layers=64),
    "full": PaperSizes(test=10_000, train=10_000, layers=512, published=tuple(PROTOCOLS)),
}


@dataclass
class LoadedModel:
    """A model ready to measure, and what the report says about it."""

    name: str
    model: nn.Module
    layer_model: nn.Module  # what the per-layer profile hooks into: the model or its backbone
    normalize: Normalization
    source: str
    datamodule_kwargs: dict[str, Any]  # CIFARDataModule arguments that reproduce its training split
    train_note: str


def load_pretrained(name: str, weights_dir: Path | None, download: bool) -> LoadedModel:
    """Pretrained CIFAR-10 ResNet ``name``: ``weights_dir`` first, then the shared folder, the cache and a download
    (see :func:`~invariance_lightning.models.cifar_resnet_weights`); a missing file raises with every way to fix
    it."""
    try:
        path = cifar_resnet_weights(
            name, search_dirs=[weights_dir] if weights_dir is not None else [], download=download
        )
    except (FileNotFoundError, DownloadError) as err:
        fixes = [
            f"pass --weights_dir FOLDER with {name}-<hash>.th (e.g. resnet20-12fca82f.th)",
            f"set {SHARED_DIR_ENV} to the folder holding weights/cifar10-resnet/ (now: {shared_dir_origin()})",
        ]
        if name in PRETRAINED_CIFAR_RESNETS:
            fixes.append(
                "download it (drop --no-download)"
                if not download
                else f"retry on a machine with internet access, or set {WEIGHTS_URL_ENV} to a mirror of the release"
            )
        fixes.append("measure your own model with --checkpoint PATH")
        raise type(err)(f"{err}\nFix it: " + "; or ".join(fixes) + ".") from err
    loaded = load_classifier(path)
    return LoadedModel(
        name=name,
        model=loaded.model,
        layer_model=loaded.model,
        normalize=loaded.normalize,
        source=str(path),
        datamodule_kwargs={"name": "cifar10", "val_split": 0},
        train_note="the pretrained weights were trained on all 50,000 CIFAR-10 training images",
    )


def load_checkpoint_model(path: Path) -> LoadedModel:
    """An ``ImageClassifier`` checkpoint, normalized as it recorded (a checkpoint saved before checkpoints recorded
    it: with its CIFAR dataset's statistics, what ``CIFARDataModule`` gave the model); its datamodule's
    hyperparameters (if saved) define its training images. ``ValueError`` for a file that is not a ``.ckpt``, a
    model trained on data other than CIFAR, or a class count that does not match its data."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file (give a Lightning .ckpt of ImageClassifier)")
    if path.suffix != ".ckpt":
        raise ValueError(
            f"--checkpoint {path}: expected a Lightning .ckpt of ImageClassifier; for pretrained CIFAR ResNet weights "
            "use --model resnet<depth> with --weights_dir"
        )
    saved = read_checkpoint(path).datamodule_hyper_parameters
    name = saved.get("name") if saved else "cifar10"
    if name not in CIFAR_STATS:
        raise ValueError(
            f"--checkpoint {path} was trained with a datamodule other than CIFARDataModule (dataset name {name!r}); "
            "this recipe measures CIFAR-10/100 models"
        )
    loaded = load_classifier(path, default_normalization=CIFAR_STATS[name])  # for checkpoints that predate it
    model = cast(ImageClassifier, loaded.model)  # a .ckpt holds an ImageClassifier
    if model.hparams.num_classes != CIFAR_NUM_CLASSES[name]:
        raise ValueError(
            f"--checkpoint {path} has num_classes={model.hparams.num_classes}, but its data, {name}, has "
            f"{CIFAR_NUM_CLASSES[name]}"
        )
    kwargs = {
        "name": name,
        "val_split": saved.get("val_split", 0),
        "seed": saved.get("seed", 0),
        "train_subset": saved.get("train_subset"),
    }
    if saved:
        note = (
            f"the checkpoint's own training split: its datamodule's val_split={kwargs['val_split']!r}, "
            f"seed={kwargs['seed']}, train_subset={kwargs['train_subset']!r} are reapplied"
        )
    else:
        note = (
            "all training images (the checkpoint saved no datamodule hyperparameters, so a validation hold-out, "
            "if any, cannot be excluded)"
        )
    return LoadedModel(
        name=checkpoint_name(path),
        model=model,
        layer_model=getattr(model, "backbone", model),
        normalize=loaded.normalize,
        source=str(path),
        datamodule_kwargs=kwargs,
        train_note=note,
    )


def load_subsets(
    loaded: LoadedModel, counts: dict[str, int], data_dir: Path | None, download: bool, seed: int
) -> tuple[dict[str, tuple[Tensor, Tensor]], CIFARDataModule]:
    """Seeded subsets ``{split: (images, labels)}`` (uint8) of ``counts[split]`` images (at most the split's size)
    of the model's data, and the datamodule. ``data_dir`` None: where :class:`CIFARDataModule` looks
    (``$INVARIANCE_DATA_DIR``, the shared folder, the cache; downloaded there when ``download``)."""
    datamodule = CIFARDataModule(data_dir=data_dir, download=download, **loaded.datamodule_kwargs)
    try:
        datamodule.setup()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}\nWith this recipe: pass --data_dir FOLDER, set {DATA_DIR_ENV} (or {SHARED_DIR_ENV} to the folder "
            "holding data/cifar10/), or run it on a machine with internet access without --no-download."
        ) from err
    subsets = {}
    for split, wanted in counts.items():
        available = datamodule.split_size(split)
        if wanted > available:
            print(f"note: {split} split has {available} images; measuring all of them instead of {wanted}")
        subsets[split] = datamodule.split_arrays(split, min(wanted, available), seed=seed)
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


def measure_splits(
    loaded: LoadedModel,
    subsets: Mapping[str, tuple[Tensor, Tensor]],
    sequences: Mapping[str, TransformSequence],
    batch_size: int,
) -> tuple[dict[str, dict[str, dict[str, Tensor]]], dict[str, float]]:
    """``{split: {protocol: metrics}}`` (each split read once for all protocols) and the seconds each split took."""
    results, seconds = {}, {}
    for split, (images, labels) in subsets.items():
        started = time.perf_counter()
        results[split] = evaluate_sequences(
            loaded.model, images, labels, sequences, batch_size=batch_size, normalize=loaded.normalize
        )
        seconds[split] = time.perf_counter() - started
        for name, metrics in results[split].items():
            print(
                f"{split:5s} {name:15s} flip rate {float(metrics['flip_rate']):.4f}  "
                f"worst-case acc {float(metrics['worst_case_accuracy']):.4f}",
                flush=True,
            )
        print(f"{split:5s} {len(sequences)} protocols ({seconds[split]:.1f} s)", flush=True)
    return results, seconds


def measure_published(
    loaded: LoadedModel, images: Tensor, labels: Tensor, names: Sequence[str], seed: int, batch_size: int
) -> tuple[dict[str, dict[str, float]], float]:
    """The published protocols ``names`` on ``images`` (indices ``0 .. N-1``, shifts seeded by ``seed``) and the
    seconds they took."""
    started = time.perf_counter()
    results = evaluate_protocols(
        loaded.model, images, labels, names, seed=seed, normalize=loaded.normalize, batch_size=batch_size
    )
    for name, numbers in results.items():
        print(f"test  {protocol_line(name, numbers)}", flush=True)
    return results, time.perf_counter() - started


@dataclass(frozen=True)
class PaperSettings:
    """Everything :func:`run_paper` needs; the recipe's options (``python recipes/paper.py --help``) map onto it.

    ``checkpoint`` (an ``ImageClassifier`` ``.ckpt``) replaces the pretrained ``model``; ``num_images`` and
    ``layer_images`` override the preset's sizes; ``protocols`` None means the paper's sequences plus the preset's
    published protocols; ``output`` None means ``results/paper/<model>``; ``command`` is recorded in the report.
    """

    model: str = "resnet20"
    checkpoint: Path | None = None
    weights_dir: Path | None = None
    data_dir: Path | None = None
    download: bool = True
    preset: str = "quick"
    num_images: int | None = None
    layer_images: int | None = None
    protocols: tuple[str, ...] | None = None
    layers: str = "blocks"
    layer_shifts: tuple[int, ...] = (1, 2, 4)
    layer_mode: str = "circular"
    layer_border: int = 0
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    output: Path | None = None
    command: str = ""

    def sizes(self) -> PaperSizes:
        """The preset's sizes with ``num_images`` / ``layer_images`` applied."""
        check_choice("PaperSettings", "preset", self.preset, tuple(PAPER_PRESETS))
        preset = PAPER_PRESETS[self.preset]
        images = self.num_images
        return PaperSizes(
            images or preset.test, images or preset.train, self.layer_images or preset.layers, preset.published
        )

    def chosen_protocols(self) -> tuple[list[str], list[str]]:
        """``(paper sequences, published protocols)`` to measure; ``ValueError`` for an unknown name or no
        sequence."""
        names = self.protocols if self.protocols is not None else (*PAPER_SEQUENCES, *self.sizes().published)
        for name in names:
            check_choice("PaperSettings", "protocols", name, (*PAPER_SEQUENCES, *PROTOCOLS))
        sequences = [name for name in names if name in PAPER_SEQUENCES]
        if not sequences:
            raise ValueError(
                f"--protocols needs at least one of {', '.join(PAPER_SEQUENCES)} besides published protocols"
            )
        return sequences, [name for name in names if name in PROTOCOLS]


def run_paper(settings: PaperSettings) -> Path:
    """Measure one model as :class:`PaperSettings` says and write ``report.md``, ``report.json`` and the PNG plots
    to its output folder; returns the path of ``report.md``."""
    started = time.perf_counter()
    sizes = settings.sizes()
    sequence_names, published_names = settings.chosen_protocols()
    if settings.checkpoint is not None:
        loaded = load_checkpoint_model(settings.checkpoint)
    else:
        loaded = load_pretrained(settings.model, settings.weights_dir, settings.download)
    # channels-last convolutions are faster on CPUs and GPUs alike; the model is ours (just loaded), not a user's
    loaded.model.to(settings.device).to(memory_format=torch.channels_last)  # layer_model: the model or a part of it
    wanted = {"test": sizes.test, "train": sizes.train}
    subsets, datamodule = load_subsets(loaded, wanted, settings.data_dir, settings.download, settings.seed)
    counts = {split: len(labels) for split, (_, labels) in subsets.items()}
    output = settings.output or Path("results") / "paper" / loaded.name
    output.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    layers = layer_equivariance(
        loaded.layer_model,
        subsets["test"][0][: sizes.layers],
        profile_layers(loaded.layer_model, settings.layers),
        shift=settings.layer_shifts[0],
        pooled_shifts=settings.layer_shifts[1:],
        mode=settings.layer_mode,
        border=settings.layer_border,
        normalize=loaded.normalize,
    )
    layer_seconds = time.perf_counter() - tick
    print(f"per-layer profile: {len(layers)} layers, {layers.num_images} images ({layer_seconds:.1f} s)", flush=True)

    preset = sequence_preset("paper")
    sequences = {name: preset[name] for name in sequence_names}
    results, seconds = measure_splits(loaded, subsets, sequences, settings.batch_size)
    published, seconds["published"] = measure_published(
        loaded, *subsets["test"], published_names, settings.seed, settings.batch_size
    )
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
        "command": settings.command,
        "model": {"name": loaded.name, "source": loaded.source, "normalize": [list(v) for v in loaded.normalize]},
        "data": {
            "dataset": datamodule.name,
            "source": datamodule.source,
            "num_images": counts,
            "image_size": list(subsets["test"][0].shape[-2:]),
            "layer_images": layers.num_images,
            "train_note": loaded.train_note,
            "datamodule": dict(loaded.datamodule_kwargs),
        },
        "settings": {
            "preset": settings.preset,
            "seed": settings.seed,
            "batch_size": settings.batch_size,
            "device": settings.device,
            **machine_info(),
        },
        "seconds": {**seconds, "layers": layer_seconds, "total": time.perf_counter() - started},
        "protocols": {name: repr(seq) for name, seq in sequences.items()},
        "published_protocols": protocols_to_dict(published, settings.seed),
        "results": {split: results_to_dict(results[split], sequences) for split in SPLITS},
        "train_test_gap": gap,
        "layers": {
            "shift": list(layers.shift),
            "mode": layers.mode,
            "border": layers.border,
            "num_images": layers.num_images,
            "rows": layers.as_dict(),
        },
        "plots": [f"{name}.png" for name in figures],
    }
    write_json(output / "report.json", payload)
    report = output / "report.md"
    report.write_text(paper_report_markdown(payload, sequences, results, layers))
    print(f"report: {report}")
    return report
