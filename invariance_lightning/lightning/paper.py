"""What the Azulay & Weiss (2019) reproduction measures: a CIFAR classifier and seeded subsets of its data.

The package half of ``recipes/paper.py`` (docs/recipes.md): loading a pretrained CIFAR ResNet (found locally or
downloaded) or an ``ImageClassifier`` checkpoint, and the test and training images it is measured on, the
training images being those the checkpoint was trained on where its datamodule saved how it split them; then
measuring them (:func:`measure_splits`, :func:`measure_published`, :func:`profile_layers`) with the torch-only
:func:`~invariance_lightning.metrics.evaluate.evaluate_sequences`, the published protocols and
:func:`~invariance_lightning.diagnostics.layer_equivariance`. Error messages name the recipe's options that fix
them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from invariance_lightning.diagnostics import default_layers
from invariance_lightning.lightning.checkpoint import load_classifier, read_checkpoint
from invariance_lightning.lightning.data import CIFAR_STATS, DATA_DIR_ENV, CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.published import evaluate_protocols
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.models import PRETRAINED_CIFAR_RESNETS, cifar_resnet_weights
from invariance_lightning.models.pretrained import SHARED_DIR_ENV, SHARED_WEIGHTS_SUBDIR, WEIGHTS_URL_ENV, DownloadError
from invariance_lightning.reporting.tables import protocol_numbers
from invariance_lightning.transforms import TransformSequence
from invariance_lightning.transforms.normalization import Normalization

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


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


def shared_root(default: Path) -> Path:
    """``$INVARIANCE_SHARED_DIR`` when set, else ``default`` (the recipe's: ``../shared`` beside the repository)."""
    return Path(os.environ[SHARED_DIR_ENV]) if os.environ.get(SHARED_DIR_ENV) else default


def load_pretrained(name: str, weights_dir: Path | None, shared: Path, download: bool) -> LoadedModel:
    """Pretrained CIFAR-10 ResNet ``name``: ``weights_dir`` first, then ``<shared>/weights/cifar10-resnet``, then the
    cache and a download (see :func:`~invariance_lightning.models.cifar_resnet_weights`); a missing file raises
    with every way to fix it."""
    folders = [weights_dir] if weights_dir is not None else []
    try:
        path = cifar_resnet_weights(name, search_dirs=[*folders, shared / SHARED_WEIGHTS_SUBDIR],
                                    download=download)
    except (FileNotFoundError, DownloadError) as err:
        origin = f"from ${SHARED_DIR_ENV}" if os.environ.get(SHARED_DIR_ENV) else "../shared beside the repository"
        fixes = [f"pass --weights-dir FOLDER with {name}-<hash>.th (e.g. resnet20-12fca82f.th)",
                 f"set {SHARED_DIR_ENV} to the folder holding weights/cifar10-resnet/ (now: {shared}, {origin})"]
        if name in PRETRAINED_CIFAR_RESNETS:
            fixes.append("download it (drop --no-download)" if not download else "retry on a machine with "
                         f"internet access, or set {WEIGHTS_URL_ENV} to a mirror of the release")
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
            "use --model resnet<depth> with --weights-dir"
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
    if model.hparams.num_classes != _NUM_CLASSES[name]:
        raise ValueError(
            f"--checkpoint {path} has num_classes={model.hparams.num_classes}, but its data, {name}, has "
            f"{_NUM_CLASSES[name]}"
        )
    kwargs = {"name": name, "val_split": saved.get("val_split", 0), "seed": saved.get("seed", 0),
              "train_subset": saved.get("train_subset")}
    if saved:
        note = (f"the checkpoint's own training split: its datamodule's val_split={kwargs['val_split']!r}, "
                f"seed={kwargs['seed']}, train_subset={kwargs['train_subset']!r} are reapplied")
    else:
        note = ("all training images (the checkpoint saved no datamodule hyperparameters, so a validation hold-out, "
                "if any, cannot be excluded)")
    return LoadedModel(
        name=path.stem,
        model=model,
        layer_model=getattr(model, "backbone", model),
        normalize=loaded.normalize,
        source=str(path),
        datamodule_kwargs=kwargs,
        train_note=note,
    )


def load_subsets(
    loaded: LoadedModel, counts: dict[str, int], data_dir: Path | None, shared: Path, download: bool, seed: int
) -> tuple[dict[str, tuple[Tensor, Tensor]], CIFARDataModule]:
    """Seeded subsets ``{split: (images, labels)}`` (uint8) of ``counts[split]`` images (at most the split's size)
    of the model's data, and the datamodule.

    ``data_dir`` None: ``$INVARIANCE_DATA_DIR`` when set, else ``<shared>/data`` if present, else the
    datamodule's cache (downloaded there when ``download``).
    """
    if data_dir is None and not os.environ.get(DATA_DIR_ENV) and (shared / "data").is_dir():
        data_dir = shared / "data"
    datamodule = CIFARDataModule(data_dir=data_dir, download=download, **loaded.datamodule_kwargs)
    try:
        datamodule.setup()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}\nWith this recipe: pass --data-dir FOLDER, set {DATA_DIR_ENV} (or {SHARED_DIR_ENV} to the folder "
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
        results[split] = evaluate_sequences(loaded.model, images, labels, sequences, batch_size=batch_size,
                                            normalize=loaded.normalize)
        seconds[split] = time.perf_counter() - started
        for name, metrics in results[split].items():
            print(f"{split:5s} {name:15s} flip rate {float(metrics['flip_rate']):.4f}  "
                  f"worst-case acc {float(metrics['worst_case_accuracy']):.4f}", flush=True)
        print(f"{split:5s} {len(sequences)} protocols ({seconds[split]:.1f} s)", flush=True)
    return results, seconds


def measure_published(
    loaded: LoadedModel, images: Tensor, labels: Tensor, names: Sequence[str], seed: int, batch_size: int
) -> tuple[dict[str, dict[str, float]], float]:
    """The published protocols ``names`` on ``images`` (indices ``0 .. N-1``, shifts seeded by ``seed``) and the
    seconds they took."""
    started = time.perf_counter()
    results = evaluate_protocols(loaded.model, images, labels, names, seed=seed, normalize=loaded.normalize,
                                 batch_size=batch_size)
    for name, numbers in results.items():
        numbers_text = "  ".join(f"{k} {v:.4f}" for k, v in protocol_numbers(numbers).items())
        print(f"test  {name:18s} " + numbers_text, flush=True)
    return results, time.perf_counter() - started
