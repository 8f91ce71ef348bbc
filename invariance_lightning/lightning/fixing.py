"""Make a trained classifier shift-invariant: the package half of ``recipes/fix.py`` (docs/recipes.md).

:func:`run_fix` measures a model (a released CIFAR ResNet by name, or an ``ImageClassifier`` checkpoint: a CIFAR
ResNet trained on CIFAR, or a torchvision/timm backbone trained on an ``ImageFolderDataModule``), converts it to an
antialiased network (``downsample=`` "blur", "aps", "lps" or "afc", its weights kept), fine-tunes it on its own data
with black-bordered crops and the consistency penalty (the settings of
``configs/cifar10/resnet20_finetuned_blur_consistency_8px.yaml`` by default), measures it again on the same test
images and writes the before/after report: accuracy, the report sequences with per-step flip rates, the published
protocols and the training time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from invariance_lightning.augment.consistency import CONSISTENCY_KINDS
from invariance_lightning.lightning.callbacks import GumbelTemperature
from invariance_lightning.lightning.checkpoint import checkpoint_name, load_classifier, read_checkpoint
from invariance_lightning.lightning.data import CIFARDataModule, ImageClassificationDataModule, ImageFolderDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.paper import LoadedModel, load_checkpoint_model, load_pretrained
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.metrics.published import check_protocol_names, evaluate_protocols
from invariance_lightning.models import CIFAR_RESNET_DEPTHS, CifarResNet
from invariance_lightning.models._downsample import ANTIALIAS_METHODS, NETWORK_PADDING_MODES
from invariance_lightning.nn.blurpool import MAX_FILTER_SIZE
from invariance_lightning.reporting.machine import machine_info
from invariance_lightning.reporting.tables import protocol_line, summary_markdown, write_report
from invariance_lightning.transforms import sequence_preset
from invariance_lightning.validation import check_choice, check_int, check_number, check_optional_int

STAGES = ("before", "after")


@dataclass(frozen=True)
class FixSettings:
    """What :func:`run_fix` does; ``python recipes/fix.py --help`` maps its options onto these fields.

    ``model`` is a released model's name (``"resnet20"``, ``"resnet56"``) or an ``ImageClassifier`` ``.ckpt`` (a
    CIFAR ResNet trained on CIFAR, or a backbone trained on an ``ImageFolderDataModule``, whose own datamodule
    settings are reused: ``data_dir`` then replaces its ``root``, ``val_split`` is CIFAR's only). ``train_subset``
    None trains on all the training images but the validation hold-out; ``filter_size`` None keeps the model's own
    low-pass length (3 for a released model or a CIFAR ResNet); ``padding_mode`` None keeps the model's own
    (zeros for a released model), ``"circular"`` makes an "aps" or "lps" network exactly invariant to circular shifts,
    so that a zero-filled shift changes its prediction only through the content it pushes out of the frame;
    ``test_images`` are measured before and after (seeded by ``seed``).
    """

    model: str = "resnet20"
    method: str = "blur"
    filter_size: int | None = None
    padding_mode: str | None = None
    epochs: int = 5
    max_shift: int = 8
    consistency_weight: float = 2.0
    consistency_kind: str = "symmetric_kl"
    consistency_max_shift: int = 1
    lr: float = 0.01
    train_subset: int | None = None
    val_split: int = 5000
    test_images: int = 10_000
    protocols: tuple[str, ...] = ("aps2021_standard",)
    data_dir: Path | None = None
    download: bool = True
    batch_size: int = 128
    seed: int = 0
    output: Path | None = None
    command: str = ""

    def __post_init__(self) -> None:
        owner = "FixSettings"
        check_choice(owner, "method", self.method, ANTIALIAS_METHODS)
        check_optional_int(owner, "filter_size", self.filter_size, 1, MAX_FILTER_SIZE)
        if self.method == "afc" and self.filter_size is not None:
            raise ValueError(f"{owner}: filter_size has no effect with method 'afc' (an ideal low-pass); leave it None")
        if self.padding_mode is not None:
            check_choice(owner, "padding_mode", self.padding_mode, NETWORK_PADDING_MODES)
        check_int(owner, "epochs", self.epochs, 1)
        check_int(owner, "max_shift", self.max_shift, 0)
        check_number(owner, "consistency_weight", self.consistency_weight, low=0)
        check_choice(owner, "consistency_kind", self.consistency_kind, CONSISTENCY_KINDS)
        check_int(owner, "consistency_max_shift", self.consistency_max_shift, 1)
        check_number(owner, "lr", self.lr, low=0, strict=True)
        check_optional_int(owner, "train_subset", self.train_subset, 1)
        check_int(owner, "val_split", self.val_split, 0)
        check_int(owner, "test_images", self.test_images, 1)
        check_protocol_names(owner, self.protocols)
        check_int(owner, "batch_size", self.batch_size, 1)
        check_int(owner, "seed", self.seed, 0)


def load_model(spec: str, download: bool) -> LoadedModel:
    """A released model by name, else an ``ImageClassifier`` checkpoint: of a CIFAR ResNet trained on CIFAR (its
    checks: :func:`~invariance_lightning.lightning.paper.load_checkpoint_model`), or of a backbone trained on an
    ``ImageFolderDataModule`` (its datamodule's settings in ``datamodule_kwargs``). ``ValueError`` for a checkpoint
    whose training data or backbone cannot be rebuilt."""
    if not spec.endswith(".ckpt"):
        return load_pretrained(spec, None, download)
    path = Path(spec)
    saved = read_checkpoint(path).datamodule_hyper_parameters
    if "root" not in saved:  # not an ImageFolderDataModule: CIFAR, or a checkpoint without datamodule settings
        loaded = load_checkpoint_model(path)
        if not isinstance(loaded.layer_model, CifarResNet):
            raise ValueError(
                f"--model {spec}: a model trained on CIFAR is fine-tuned as a CIFAR ResNet, got "
                f"{type(loaded.layer_model).__name__}"
            )
        return loaded
    classifier = load_classifier(path)
    model = cast(ImageClassifier, classifier.model)  # a .ckpt holds an ImageClassifier
    if not isinstance(model.hparams.get("backbone"), str):
        raise ValueError(
            f"--model {spec}: its backbone was passed as a module, not a name, so the fine-tuning cannot rebuild it; "
            "train it with ImageClassifier(backbone='torchvision:resnet18') or another build_backbone name"
        )
    if saved.get("test_dir") is None:
        raise ValueError(
            f"--model {spec}: its ImageFolderDataModule has no test split (test_dir=None), and the before/after "
            "report measures held-out test images; train with test_dir set (e.g. test_dir: val for Imagenette)"
        )
    return LoadedModel(
        name=checkpoint_name(path),
        model=model,
        layer_model=model.backbone,
        normalize=classifier.normalize,
        source=str(path),
        datamodule_kwargs=dict(saved),
        train_note="its ImageFolderDataModule's own training split",
    )


def fix_datamodule(settings: FixSettings, before: LoadedModel) -> ImageClassificationDataModule:
    """The data ``before`` was trained on (CIFAR, or its ``ImageFolderDataModule`` rebuilt from its checkpoint),
    with the fine-tuning's batch size, seed and training subset."""
    if isinstance(before.layer_model, CifarResNet):
        return CIFARDataModule(
            name=before.datamodule_kwargs.get("name", "cifar10"),
            # a str: checkpoints stay weights_only
            data_dir=None if settings.data_dir is None else str(settings.data_dir),
            download=settings.download,
            val_split=settings.val_split,
            batch_size=settings.batch_size,
            seed=settings.seed,
            train_subset=settings.train_subset,
        )
    kwargs = {
        # without what LightningCLI adds to the saved arguments ("_class_path", "_instantiator")
        **{name: value for name, value in before.datamodule_kwargs.items() if not name.startswith("_")},
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "train_subset": settings.train_subset,
    }
    if settings.data_dir is not None:
        kwargs["root"] = str(settings.data_dir)
    return ImageFolderDataModule(**kwargs)


def dataset_label(datamodule: ImageClassificationDataModule) -> str:
    """How the report names the data: ``"CIFAR-10"``/``"CIFAR-100"``, else the image folder's name."""
    if isinstance(datamodule, CIFARDataModule):
        return str(datamodule.hparams["name"]).upper().replace("CIFAR", "CIFAR-")
    return Path(datamodule.hparams["root"]).name


def fine_tuning_architecture(before: LoadedModel) -> dict[str, Any]:
    """The ``ImageClassifier`` arguments that rebuild ``before``'s backbone (less its ``downsample``; with the
    ``filter_size`` it was trained with, if any)."""
    backbone = before.layer_model
    if isinstance(backbone, CifarResNet):
        depth = 6 * len(backbone.layer1) + 2
        if depth not in CIFAR_RESNET_DEPTHS:
            raise ValueError(f"--model {before.source}: a CIFAR ResNet of depth {depth} has no backbone name")
        return {"backbone": f"cifar_resnet{depth}", "num_classes": backbone.linear.out_features}
    hparams = cast(ImageClassifier, before.model).hparams
    names = ("backbone", "num_classes", "image_size", "filter_size", "padding_mode", "channels_last")
    return {name: hparams[name] for name in names if name in hparams}


#: Settings that do not change what a fine-tuning run computes (where the data is read, how the run was typed).
_INCIDENTAL_SETTINGS = ("data_dir", "download", "output", "command")


def resume_checkpoint(output: Path, settings: FixSettings) -> Path | None:
    """The ``last.ckpt`` an interrupted run with the same settings left in ``output`` (the fine-tuning resumes from
    it), else None. Records the settings in ``output/settings.json``; ``ValueError`` when the folder holds a run with
    other settings (continuing it would silently mix the two)."""
    record = output / "settings.json"
    current = json.loads(
        json.dumps(
            {name: value for name, value in asdict(settings).items() if name not in _INCIDENTAL_SETTINGS}, default=str
        )
    )
    last = output / "checkpoints" / "last.ckpt"
    if last.is_file():
        recorded = json.loads(record.read_text()) if record.is_file() else {}
        differing = sorted(name for name in current if recorded.get(name) != current[name])
        if differing:
            raise ValueError(
                f"{output} holds a fine-tuning run with other settings ({', '.join(differing)}); give another "
                "--output or delete that folder"
            )
        return last
    record.write_text(json.dumps(current, indent=1) + "\n")
    return None


def measure(
    loaded: LoadedModel,
    images: Tensor,
    labels: Tensor,
    protocols: tuple[str, ...],
    seed: int,
    batch_size: int,
    device: torch.device,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, float]]]:
    """The report sequences and the published ``protocols`` of ``loaded`` on ``images``, run on ``device``."""
    loaded.model.to(device)  # the measurements run where the model is
    sequences = sequence_preset("report")
    results = evaluate_sequences(
        loaded.model, images, labels, sequences, batch_size=2 * batch_size, normalize=loaded.normalize
    )
    published = evaluate_protocols(
        loaded.model, images, labels, protocols, seed=seed, normalize=loaded.normalize, batch_size=2 * batch_size
    )
    return results, published


def run_fix(settings: FixSettings) -> Path:
    """Measure, convert, fine-tune, measure again; returns the path of ``summary.md`` in the output folder."""
    before = load_model(settings.model, settings.download)
    architecture = fine_tuning_architecture(before)
    output = settings.output or Path("results") / "fix" / f"{before.name}_{settings.method}"
    output.mkdir(parents=True, exist_ok=True)
    resume = resume_checkpoint(output, settings)  # before the measurement: a clash fails at once
    datamodule = fix_datamodule(settings, before)
    datamodule.setup("fit")
    # the backbone's weights as a plain weights file: what ImageClassifier(init_weights=...) reads for either source
    # (saved here, before the measurement moves the model to the training device)
    initial = output / "initial_weights.pt"
    torch.save({"state_dict": before.layer_model.state_dict()}, initial)
    # built first: the measurements before and after run on the device it trains on (a GPU where there is one)
    checkpoints = ModelCheckpoint(dirpath=output / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        max_epochs=settings.epochs,
        accelerator="auto",
        devices=1,
        default_root_dir=output,
        logger=CSVLogger(output, name="logs"),
        # LPS trains on a soft choice whose temperature must fall towards the hard choice evaluation makes
        callbacks=[checkpoints, *([GumbelTemperature()] if settings.method == "lps" else [])],
        enable_progress_bar=False,
    )
    device = trainer.strategy.root_device
    images, labels = datamodule.split_arrays("test", min(settings.test_images, datamodule.split_size("test")), seed=0)
    results, published = {}, {}
    results["before"], published["before"] = measure(
        before, images, labels, settings.protocols, settings.seed, settings.batch_size, device
    )

    pl.seed_everything(settings.seed, verbose=False)
    if settings.filter_size is not None:  # else the model's own (or ImageClassifier's default)
        architecture["filter_size"] = settings.filter_size
    if settings.padding_mode is not None:  # else the model's own (zeros unless it was trained circular)
        architecture["padding_mode"] = settings.padding_mode
    classifier = ImageClassifier(
        **architecture,
        downsample=settings.method,
        augmentation="standard",
        max_shift=settings.max_shift,
        lr=settings.lr,
        consistency_weight=settings.consistency_weight,
        consistency_kind=settings.consistency_kind,
        consistency_max_shift=settings.consistency_max_shift,
        init_weights=str(initial),
        mean=list(before.normalize.mean),
        std=list(before.normalize.std),
    )
    started = time.perf_counter()
    trainer.fit(classifier, datamodule=datamodule, ckpt_path=resume)
    minutes = (time.perf_counter() - started) / 60
    after = load_model(str(output / "checkpoints" / "last.ckpt"), download=False)  # also when nothing was left
    results["after"], published["after"] = measure(
        after, images, labels, settings.protocols, settings.seed, settings.batch_size, device
    )

    sequences = sequence_preset("report")
    train_images, machine = datamodule.split_size("train"), machine_info()
    used_filter = None if settings.method == "afc" else classifier.hparams["filter_size"]  # afc: an ideal low-pass
    payload = {
        "command": settings.command,
        "model": before.source,
        "method": settings.method,
        "filter_size": used_filter,
        "padding_mode": classifier.hparams["padding_mode"],
        "training": {
            "epochs": settings.epochs,
            "minutes": minutes,
            "train_images": train_images,
            "resumed": resume is not None,  # then "minutes" are only this invocation's part
            "max_shift": settings.max_shift,
            "lr": settings.lr,
            "consistency": {
                "weight": settings.consistency_weight,
                "kind": settings.consistency_kind,
                "max_shift": settings.consistency_max_shift,
            },
        },
        "test_images": len(labels),
        "machine": machine,
    }
    conversion = settings.method if used_filter is None else f"{settings.method}, filter {used_filter}"
    if classifier.hparams["padding_mode"] != "zeros":
        conversion += f", {classifier.hparams['padding_mode']} padding"
    titles = {"before": before.name, "after": f"{before.name} converted ({conversion}) and fine-tuned"}
    for stage in STAGES:
        write_report(
            output,
            stage,
            {**payload, "stage": stage},
            results[stage],
            sequences,
            f"{stage.capitalize()} fine-tuning: {titles[stage]} on {len(labels)} {dataset_label(datamodule)} test "
            "images",
            notes=f"Command: `{settings.command}`",
            protocols=published[stage],
            protocol_seed=settings.seed,
        )
    rows = {f"{name} ({stage})": results[stage][name] for name in sequences for stage in STAGES}
    lines = [
        f"# Making {before.name} shift-invariant: {conversion}, {settings.epochs} epochs of fine-tuning",
        "",
        f"`{settings.command}`",
        "",
        f"Fine-tuned on {train_images:,} training images in {minutes:.1f} minutes"
        f"{' (resumed: the minutes after the interruption only)' if resume is not None else ''} "
        f"({machine['gpu'] or machine['machine']}, {machine['threads']} threads): crops with black borders up to "
        f"{settings.max_shift} px, peak learning rate {settings.lr}, {settings.consistency_kind} consistency of weight "
        f"{settings.consistency_weight} against a further shift of up to {settings.consistency_max_shift} px; "
        f"measured on {len(labels):,} test images "
        "before and after. Full reports: [before.md](before.md), [after.md](after.md).",
        "",
        summary_markdown(rows),
        "",
        "Published protocols:",
        "",
        *(
            f"- {stage}: `{protocol_line(name, numbers)}`"
            for stage in STAGES
            for name, numbers in published[stage].items()
        ),
    ]
    summary = output / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    print(f"summary: {summary}")
    return summary
