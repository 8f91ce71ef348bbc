"""Reading weights files safely and loading them into a network, new layers of a converted network left as built.

:func:`load_weights_only` is the one place that unpickles a weights file (``weights_only=True``);
:func:`load_backbone_weights` loads a plain backbone's weights into it or into its antialiased conversion (an LPS
network's scorers are new parameters that the plain weights cannot have: they keep their initialization).
:func:`~invariance_lightning.models.load_cifar_resnet` adds the CIFAR ResNet layouts (released files, prefixes).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn

from invariance_lightning.nn import LPS2d


def load_weights_only(path: str | PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; ``ValueError`` for a file that would need
    arbitrary unpickling (which can execute code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refusing to load {str(path)!r}: it cannot be read with torch.load(weights_only=True) and "
            "unpickling arbitrary objects can execute code. Re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), path)) or a dict of tensors."
        ) from error


def with_untrained_layers(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` completed by ``model``'s own values of the keys only a converted network has (the scorers of its
    :class:`~invariance_lightning.nn.LPS2d` layers, under every path that reaches them: a shortcut's follower holds
    its leader too), so that a strict ``load_state_dict`` still checks every other key."""
    new = {
        f"{name}.{key}"
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, LPS2d)
        for key in module.state_dict()
    }
    present = {key: value for key, value in model.state_dict().items() if key in new and key not in state}
    return {**state, **present}


def load_backbone_weights(path: str | PathLike[str], model: nn.Module) -> nn.Module:
    """Load the backbone weights saved at ``path`` (a plain state dict or ``{"state_dict": ...}``) into ``model``
    (in place; returned), e.g. a torchvision/timm ResNet's weights into its :func:`~invariance_lightning.models.
    antialias` conversion: every key must match but an LPS network's new scorers. ``ValueError`` when they do not
    fit."""
    checkpoint = load_weights_only(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} holds no state dict (expected a dict of tensors or {{'state_dict': ...}})")
    try:
        model.load_state_dict(with_untrained_layers(model, state))
    except RuntimeError as error:
        raise ValueError(f"the weights in {str(path)!r} do not fit {type(model).__name__}: {error}") from error
    return model
