"""Measure a LightningModule on an image subset, sharded over processes, with synced metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from invariance_lightning.callbacks.subsets import ImageSubset
from invariance_lightning.metrics import TransformConsistency, iter_frame_logits
from invariance_lightning.metrics.evaluate import Normalization
from invariance_lightning.transforms import TransformSequence

ModuleForward = Callable[[pl.LightningModule, Tensor], Tensor]


class NonFiniteLogitsError(ValueError):
    """The model produced NaN or infinite logits on some frame (on any process)."""


@dataclass
class SequenceMeasurement:
    """Synced metric values for one sequence, and this process's per-image predictions (n_local, T)."""

    metrics: dict[str, Tensor]
    predictions: Tensor
    indices: list[int]


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every submodule's own training flag restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, training in flags:
            submodule.training = training


def measure_sequences(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    shard: ImageSubset,
    sequences: Mapping[str, TransformSequence],
    *,
    batch_size: int,
    normalize: Normalization | None,
    forward_fn: ModuleForward | None,
    top_k: int | None,
) -> dict[str, SequenceMeasurement]:
    """Run every sequence over this process's ``shard`` and return metrics synced over all processes.

    Every process must call this (metric syncing is collective), also with an empty shard. Raises
    :class:`NonFiniteLogitsError` on every process if any process saw non-finite logits.
    """
    results = {}
    for name, sequence in sequences.items():
        metric = TransformConsistency(top_k=top_k, num_frames=len(sequence)).to(pl_module.device)
        predictions, finite = [], True
        with evaluation_mode(pl_module), trainer.precision_plugin.val_step_context():
            chunks = iter_frame_logits(
                pl_module,
                shard.images,
                sequence,
                shard.targets,
                batch_size=batch_size,
                normalize=normalize,
                forward_fn=forward_fn,
                device=pl_module.device,
            )
            for logits, targets in chunks:
                if not bool(torch.isfinite(logits).all()):
                    finite = False
                    break
                metric.update(logits.float(), targets)
                predictions.append(logits.argmax(dim=-1).cpu())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise NonFiniteLogitsError(f"the model produced NaN or infinite logits on the {name!r} sequence")
        local_predictions = torch.cat(predictions) if predictions else torch.empty(0, len(sequence), dtype=torch.long)
        results[name] = SequenceMeasurement(metric.compute(), local_predictions, list(shard.indices))
    return results
