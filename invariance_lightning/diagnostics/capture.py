"""Which layers to measure, and capturing their outputs with forward hooks."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

__all__ = ["capture_outputs", "check_layer_names", "default_layers"]

#: ``run(x)`` of :func:`capture_outputs`: ``{layer name: (its last output, how often it ran)}``.
Run = Callable[[Tensor], dict[str, tuple[Any, int]]]


def default_layers(model: nn.Module) -> list[str]:
    """Layers measured when none are named, in ``named_modules`` order.

    Every ``nn.Conv2d``; every module whose class name contains ``Pool`` (torch's pooling layers,
    BlurPool and similar); every block, i.e. a non-leaf module that is a direct child of an
    ``nn.Sequential`` or ``nn.ModuleList`` (the residual blocks of a ResNet stage); and the last
    ``nn.Linear`` (usually the classifier).
    """
    chosen: list[str] = []
    last_linear: str | None = None
    blocks = {
        f"{parent}.{child}" if parent else child
        for parent, module in model.named_modules()
        if isinstance(module, (nn.Sequential, nn.ModuleList))
        for child, sub in module.named_children()
        if next(sub.children(), None) is not None
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) or "pool" in type(module).__name__.lower() or name in blocks:
            chosen.append(name)
        elif isinstance(module, nn.Linear):
            last_linear = name
    if last_linear is not None:
        chosen.append(last_linear)
    return chosen


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[Run]:
    """Forward hooks on the modules ``names``; yields ``run(x)``, which runs ``model(x)`` and returns
    ``{name: (last output, calls)}`` in first-call order. The hooks are removed on exit, also on error."""
    modules = dict(model.named_modules())
    outputs: dict[str, tuple[Any, int]] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            outputs[name] = (output, outputs[name][1] + 1 if name in outputs else 1)

        return hook

    def run(x: Tensor) -> dict[str, tuple[Any, int]]:
        outputs.clear()
        model(x)
        return dict(outputs)

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield run
    finally:
        for handle in handles:
            handle.remove()


def check_layer_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """``layers`` as a list if they are distinct module names of ``model``; else an error suggesting close names."""
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"layers must be a sequence of module names (str), got {layers!r}")
    valid = [name for name, _ in model.named_modules()]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        close = {name: difflib.get_close_matches(name, valid, n=3) for name in unknown}
        hints = "; ".join(f"{name!r} (did you mean {c}?)" if c else repr(name) for name, c in close.items())
        raise ValueError(f"unknown layers: {hints}; valid names include {valid[1:9]} (see model.named_modules())")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a name, got {list(layers)}")
    return list(layers)
