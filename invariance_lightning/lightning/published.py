"""The published protocols (:mod:`invariance_lightning.metrics.protocols`) over batches of a split.

The ``evaluate`` command, the recipes and :class:`~invariance_lightning.lightning.callbacks.InvarianceMonitor`
share this: :class:`ProtocolTotals` sums each protocol's additive counts batch by batch (and, in the monitor,
over processes), so that the numbers equal :func:`~invariance_lightning.metrics.protocols.evaluate_protocol` on
all the images at once, given each image's index in the evaluated set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from invariance_lightning.metrics.evaluate import ForwardFn, Normalization
from invariance_lightning.metrics.outputs import check_outputs
from invariance_lightning.metrics.protocols import PROTOCOLS, get_protocol, protocol_counts


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


class ProtocolTotals:
    """Summed counts of published protocols over the batches given to :meth:`update`.

    Args:
        names: keys of :data:`PROTOCOLS`.
        seed: seeds the random shifts (with each image's index).
        normalize, batch_size, device, forward_fn, outputs: as in :func:`~invariance_lightning.metrics.protocols.
            protocol_counts` (``outputs="probabilities"`` for a model ending in a softmax or sigmoid; a binary
            model's one logit needs nothing: it counts as two classes).
    """

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
    ) -> None:
        self.names = check_protocol_names(type(self).__name__, names)
        self.outputs = check_outputs(type(self).__name__, outputs)
        self.seed = seed
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device
        self.forward_fn = forward_fn
        self.counts: dict[str, dict[str, Tensor]] = {name: {} for name in self.names}

    def update(self, model: nn.Module, images: Tensor, targets: Tensor | None, indices: Tensor) -> None:
        """Add the counts of ``images`` (with ``targets`` or None), whose indices in the evaluated set are
        ``indices``; an empty batch adds nothing."""
        if not len(images):
            return
        for name in self.names:
            counts = protocol_counts(
                model, images, targets, name, indices=indices, normalize=self.normalize, seed=self.seed,
                batch_size=self.batch_size, device=self.device, forward_fn=self.forward_fn, outputs=self.outputs,
            )
            for key, value in counts.items():
                self.counts[name][key] = self.counts[name].get(key, 0) + value

    def compute(self) -> dict[str, dict[str, float]]:
        """``{protocol: its numbers}`` from the counts so far (see ``ShiftProtocol.summarize``)."""
        return summarize(self.counts)


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

