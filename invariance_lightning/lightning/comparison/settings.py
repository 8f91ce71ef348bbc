"""What a comparison is asked to do: the config families, the size presets and the recipe's settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The variants compared by default, where a family has them.
MAIN_VARIANTS = ("plain", "augmented", "blur", "aps", "augmented_blur")


@dataclass(frozen=True)
class Family:
    """A folder of configs and how to point its datamodule at local data."""

    data_key: str  # the datamodule argument that takes the data location
    data_subdir: str  # where the data sits under a shared-style folder (``<dir>/data/<data_subdir>``)


FAMILIES = {"cifar10": Family("data_dir", "cifar10"), "imagenette": Family("root", "imagenette-128")}


@dataclass(frozen=True)
class Preset:
    """Sizes of a comparison; ``None`` keeps the config's value (or, for ``test_images``, the whole test split).

    ``max_epochs`` caps each variant's epochs: a config planned for fewer (a fine-tuning run) keeps its own.
    """

    max_epochs: int | None
    train_subset: int | None
    test_images: int | None
    trainer: Mapping[str, Any]  # Trainer arguments on the command line
    data: Mapping[str, Any]  # datamodule arguments on the command line
    model: Mapping[str, Any]  # ImageClassifier arguments on the command line
    monitor: Mapping[str, Any]  # InvarianceMonitor arguments replaced in the config copy
    smoke: bool

    def describe(self) -> str:
        """The sizes in words."""
        epochs = "the configs' epochs" if self.max_epochs is None else f"{self.max_epochs} epoch(s)"
        train = "the whole training split" if self.train_subset is None else f"{self.train_subset} training images"
        parts = [f"{epochs} on {train}"]
        groups = (("trainer", self.trainer), ("data", self.data), ("model", self.model), ("monitor", self.monitor))
        for what, arguments in groups:
            if arguments:
                parts.append(f"{what} " + " ".join(f"{key}={value}" for key, value in arguments.items()))
        parts.append("all test images" if self.test_images is None else f"{self.test_images} test images")
        return ", ".join(parts)


#: ``tiny`` is for tests; ``quick`` is a CPU smoke run; ``cpu`` is a real but reduced schedule that a 2-core CPU
#: trains in minutes per variant (20 one-cycle epochs on a 5,000-image training subset, per-epoch validation on 10
#: batches); ``cpu-full`` trains on the whole training split (CIFAR-10: 45,000 images) with the CPU's fastest
#: settings (the datamodule's device-resident uint8 batches with kornia augmentation, channels-last, one-cycle,
#: label smoothing 0.1) for 15 epochs, 30-40 minutes per augmented ResNet-20 on 2 idle cores
#: (benchmarks/results/cpu_training.md); ``full`` trains as the configs say (for a GPU). The CPU presets skip the
#: monitor's per-epoch PNGs (seconds per epoch on a CPU). ``limit_val_batches`` stays >= 2: the CLI parses ``1`` as
#: the float 1.0, which Lightning reads as 100%.
COMPARISON_PRESETS = {
    "tiny": Preset(
        1,
        128,
        64,
        trainer={"limit_val_batches": 2, "num_sanity_val_steps": 0},
        data={"batch_size": 32},
        model={},
        monitor={"num_samples": 32, "log_plots": False},
        smoke=True,
    ),
    "quick": Preset(
        3,
        2000,
        1000,
        trainer={"limit_val_batches": 4},
        data={},
        model={},
        monitor={"num_samples": 128, "log_plots": False},
        smoke=True,
    ),
    "cpu": Preset(
        20,
        5000,
        2000,
        trainer={"limit_val_batches": 10},
        data={},
        model={},
        monitor={"num_samples": 256, "log_plots": False},
        smoke=False,
    ),
    "cpu-full": Preset(
        15,
        None,
        None,
        trainer={},
        data={"batch_size": 128},
        model={"channels_last": True, "label_smoothing": 0.1},
        monitor={"num_samples": 256, "log_plots": False},
        smoke=False,
    ),
    "full": Preset(None, None, None, trainer={}, data={}, model={}, monitor={}, smoke=False),
}


@dataclass(frozen=True)
class ComparisonSettings:
    """What the recipe's command line asks for (``None``: the preset's or the default value)."""

    repo_root: Path  # the repository whose configs/ are compared (relative config paths start there)
    family: str = "cifar10"
    variants: Sequence[str] | None = None  # None: MAIN_VARIANTS; ["all"]: every config of the family
    preset: str = "quick"  # a key of COMPARISON_PRESETS
    epochs: int | None = None
    train_subset: int | None = None
    test_images: int | None = None
    monitor_samples: int | None = None
    data_dir: Path | None = None
    output: Path | None = None  # default results/compare_<family>_<preset>
    runs_dir: Path | None = None  # default runs/ for full, <output>/runs otherwise
    reuse: bool = False
    no_wandb: bool = False
    seed: int = 0  # the test subset and the published protocols' random shifts
    batch_size: int = 256
    protocols: Sequence[str] = ()  # published protocols (metrics.protocols.PROTOCOLS) run on the test images
    command: str = ""  # the command line, for the report
