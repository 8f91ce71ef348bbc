"""The published protocols (:mod:`invariance_lightning.metrics.protocols`) over batches of a split, and processes.

The ``evaluate`` command, the recipes and :class:`~invariance_lightning.lightning.callbacks.InvarianceMonitor`
share :class:`ProtocolTotals`, a torchmetrics ``Metric``: it sums each protocol's additive counts batch by batch
and (``dist_reduce_fx="sum"``) over processes, so that the numbers equal
:func:`~invariance_lightning.metrics.protocols.evaluate_protocol` on all the images at once, given each image's
index in the evaluated set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from invariance_lightning.metrics.evaluate import ForwardFn
from invariance_lightning.metrics.outputs import check_outputs
from invariance_lightning.metrics.protocols import PROTOCOLS, get_protocol, protocol_counts
from invariance_lightning.transforms.normalization import Normalization

__all__ = ["ProtocolTotals", "check_protocol_names", "evaluate_protocols", "summarize"]


def check_protocol_names(owner: str, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple of distinct :data:`PROTOCOLS` keys; ValueError (listing the valid names) otherwise."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{owner}: protocols must be a sequence of protocol names, got {names!r}")
    for name in names:
        try:
            get_protocol(name)
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: protocols names a protocol twice: {list(names)}")
    return tuple(names)


class ProtocolTotals(Metric):
    """Summed counts of published protocols over the batches given to :meth:`update`, and over processes.

    One state per protocol, its :attr:`~invariance_lightning.metrics.protocols.ShiftProtocol.count_names` counts
    (int64), reduced with ``dist_reduce_fx="sum"``: under DDP every process updates with its shard (each image's
    global index in ``indices``; an empty shard adds nothing) and :meth:`compute` gives the numbers of all of them.

    Args:
        names: keys of :data:`PROTOCOLS`.
        seed: seeds the random shifts (with each image's index).
        normalize, batch_size, device, forward_fn, outputs: as in :func:`~invariance_lightning.metrics.protocols.
            protocol_counts` (``device``: where the model runs; ``outputs="probabilities"`` for a model ending in a
            softmax or sigmoid; a binary model's one logit needs nothing: it counts as two classes).
        kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        names: Sequence[str],
        *,
        seed: int,
        normalize: Normalization | None,
        batch_size: int,
        device: torch.device | str | None = None,
        forward_fn: ForwardFn | None = None,
        outputs: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.names = check_protocol_names(type(self).__name__, names)
        self.outputs = check_outputs(type(self).__name__, outputs)
        self.seed = seed
        self.normalize = normalize
        self.batch_size = batch_size
        self.model_device = device
        self.forward_fn = forward_fn
        for index, name in enumerate(self.names):
            zeros = torch.zeros(len(PROTOCOLS[name].count_names), dtype=torch.long)
            self.add_state(f"counts_{index}", default=zeros, dist_reduce_fx="sum")

    def update(self, model: nn.Module, images: Tensor, targets: Tensor | None, indices: Tensor) -> None:
        """Add the counts of ``images`` (with ``targets`` or None), whose indices in the evaluated set are
        ``indices``; an empty batch adds nothing."""
        if not len(images):
            return
        for index, name in enumerate(self.names):
            counts = protocol_counts(
                model,
                images,
                targets,
                name,
                indices=indices,
                normalize=self.normalize,
                seed=self.seed,
                batch_size=self.batch_size,
                device=self.model_device,
                forward_fn=self.forward_fn,
                outputs=self.outputs,
            )
            added = torch.stack([counts.get(key, torch.tensor(0)) for key in PROTOCOLS[name].count_names])
            state = f"counts_{index}"
            setattr(self, state, getattr(self, state) + added.to(getattr(self, state).device))

    def compute(self) -> dict[str, dict[str, float]]:
        """``{protocol: its numbers}`` from the counts so far (see ``ShiftProtocol.summarize``); ValueError if no
        image was counted."""
        counts = {
            name: dict(zip(PROTOCOLS[name].count_names, getattr(self, f"counts_{index}").cpu()))
            for index, name in enumerate(self.names)
        }
        if any(int(values["num_images"]) == 0 for values in counts.values()):
            raise ValueError(f"{type(self).__name__}: no image was counted")
        return summarize(counts)


def summarize(counts: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
    """``{protocol: PROTOCOLS[protocol].summarize(its counts)}``."""
    return {name: PROTOCOLS[name].summarize(values) for name, values in counts.items()}


def evaluate_protocols(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    names: Sequence[str],
    *,
    seed: int = 0,
    normalize: Normalization | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    outputs: str = "logits",
) -> dict[str, dict[str, float]]:
    """Every protocol of ``names`` on in-memory ``images`` (indices ``0 .. N-1``): ``{protocol: numbers}``."""
    totals = ProtocolTotals(
        names, seed=seed, normalize=normalize, batch_size=batch_size, device=device, outputs=outputs
    )
    totals.update(model, images, targets, torch.arange(len(images)))
    return totals.compute()
