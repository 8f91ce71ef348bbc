"""The one checkpoint reader: trained classifiers for evaluation, and what a Lightning checkpoint records.

Every checkpoint is read with ``weights_only=True`` and the one allow-list :data:`CHECKPOINT_SAFE_GLOBALS`, so a
file carrying pickled code is refused before any of it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, load_cifar_resnet
from invariance_lightning.transforms.normalization import Normalization, check_normalize

#: Classes a checkpoint may hold beyond tensors and plain containers: a datamodule given a ``pathlib`` folder
#: saves it among its hyperparameters, and a path is safe to unpickle.
CHECKPOINT_SAFE_GLOBALS = (PurePosixPath, PosixPath, PureWindowsPath, WindowsPath)


class LoadedClassifier(NamedTuple):
    """A model in eval mode, the ``(mean, std)`` its inputs need, and a short name for reports."""

    model: nn.Module
    normalize: Normalization
    name: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What a Lightning checkpoint records besides the weights.

    ``epochs`` counts the completed epochs (Lightning saves the 0-based epoch it was saved in);
    ``callbacks`` maps each callback's ``state_key`` to its saved state; ``input_normalization`` is
    what :class:`ImageClassifier` normalized with (None in checkpoints saved before it was stored).
    """

    path: Path
    epochs: int
    global_step: int
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    datamodule_hyper_parameters: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_normalization: Normalization | None = None

    def callback_states(self, name: str) -> list[dict[str, Any]]:
        """The saved states of the callbacks of class ``name`` (state keys ``name`` or ``name{...}``), in order."""
        return [state for key, state in self.callbacks.items() if key == name or key.startswith(name + "{")]


def checkpoint_name(path: str | Path) -> str:
    """How reports name the model saved at ``path``: its run folder for Lightning's ``<run>/checkpoints/<file>``
    (``last.ckpt`` names no model), else the file's stem."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" and path.parent.parent.name else path.stem


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """The metadata of the Lightning checkpoint at ``path`` (loaded on the CPU with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give a Lightning .ckpt file")
    with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'epoch' entry)")
    normalization = state.get("input_normalization")
    return CheckpointInfo(
        path=path,
        epochs=int(state["epoch"]) + 1,
        global_step=int(state.get("global_step", 0)),
        hyper_parameters=dict(state.get("hyper_parameters") or {}),
        datamodule_hyper_parameters=dict(state.get("datamodule_hyper_parameters") or {}),
        callbacks=dict(state.get("callbacks") or {}),
        input_normalization=(
            None
            if normalization is None
            else Normalization(*cast(Normalization, check_normalize("read_checkpoint", "normalization", normalization)))
        ),
    )


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", *, default_normalization: Normalization | None = None
) -> LoadedClassifier:
    """Load ``path``: a Lightning ``.ckpt`` of :class:`ImageClassifier`, or CIFAR ResNet weights
    (``.th``/``.pt``/``.pth``).

    An ``ImageClassifier`` checkpoint carries the normalization it trained with (its ``mean``/``std``
    or its datamodule's). A checkpoint saved before that was stored, from a model trained without
    ``mean``/``std``, needs ``default_normalization`` (the statistics of its training data); without
    it, ``ValueError``. Pretrained CIFAR ResNet weights use the normalization they were trained with
    (ImageNet statistics).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: give a Lightning .ckpt or CIFAR ResNet weights (.th/.pt)")
    if path.suffix != ".ckpt":
        resnet = load_cifar_resnet(path)
        return LoadedClassifier(resnet.eval(), Normalization(*CIFAR_RESNET_NORMALIZE), path.stem.split("-")[0])
    with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
        model = ImageClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    normalization = model.input_normalization or default_normalization
    if normalization is None:
        raise ValueError(
            f"{path} does not record the input normalization its model was trained with (it was saved before "
            "ImageClassifier stored it, from a model without mean/std): pass default_normalization=(mean, std), "
            "the statistics of the data it was trained on"
        )
    # a plain (mean, std) tuple, never None here
    checked = cast(Normalization, check_normalize("load_classifier", "the normalization", normalization))
    return LoadedClassifier(model.eval(), Normalization(*checked), path.stem)
