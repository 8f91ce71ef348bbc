"""Measure a LightningModule on a stream of image batches (this process's shard), with synced metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import lightning.pytorch as pl
import torch
from torch import Tensor

from invariance_lightning.metrics import TransformConsistency
from invariance_lightning.metrics.evaluate import ForwardFn, Normalization, iter_sequence_logits
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.metrics.outputs import class_targets_error
from invariance_lightning.transforms import TransformSequence
from invariance_lightning.validation import NonFiniteLogitsError, check_finite_logits

#: ``forward_fn(pl_module, x) -> logits``. The return type is ``Any``, not ``Tensor``: for a ``Callable`` returning a
#: class, jsonargparse (LightningCLI) accepts only functions annotated ``-> Tensor``, so a plain importable function
#: named in a YAML config would fail to parse.
ModuleForward = Callable[[pl.LightningModule, Tensor], Any]


def targets_error(targets: Tensor | None, num_classes: int, split: str) -> str | None:
    """Why ``split``'s ``targets`` cannot be class indices of ``num_classes`` classes (a binary module's one logit
    counts as two; floats holding whole numbers are class indices), with what to do; None if they can."""
    error = class_targets_error(targets, num_classes)
    return None if error is None else f"{split!r} {error}"


@dataclass
class FlipExamples:
    """The (at most ``limit``) images seen so far whose top-1 prediction flips most often along a sequence.

    Offered batch by batch; ties go to the image offered first, so the result is what a stable sort
    of all images by flip count would keep, while only ``limit`` images are ever held.
    """

    limit: int
    images: Tensor | None = None
    predictions: Tensor | None = None
    targets: Tensor | None = None

    def add(self, images: Tensor, predictions: Tensor, targets: Tensor | None) -> None:
        """Offer ``images`` (n, C, H, W) with their ``predictions`` (n, T) and ``targets`` (n,) or None."""
        if self.images is not None:
            assert self.predictions is not None  # kept together with images
            images = torch.cat([self.images, images])
            predictions = torch.cat([self.predictions, predictions])
            targets = None if targets is None or self.targets is None else torch.cat([self.targets, targets])
        flips = (predictions[:, 1:] != predictions[:, :-1]).sum(dim=1)
        keep = torch.argsort(flips, descending=True, stable=True)[: self.limit]
        self.images, self.predictions = images[keep], predictions[keep]
        self.targets = None if targets is None else targets[keep]


@dataclass
class SequenceMeasurement:
    """Synced metric values for one sequence, how often each class was the top-1 prediction over all frames (summed
    over processes), and this process's most-flipping images."""

    metrics: dict[str, Tensor]
    examples: FlipExamples
    predicted_classes: Tensor

    def dominant_class(self) -> tuple[int, float]:
        """The most predicted class and its share of all frames."""
        total = int(self.predicted_classes.sum())
        top = int(self.predicted_classes.argmax())
        return top, int(self.predicted_classes[top]) / max(total, 1)


def measure_sequences(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    sequences: Mapping[str, TransformSequence],
    *,
    split: str,
    num_classes: int,
    batch_size: int,
    normalize: Normalization | None,
    forward_fn: ModuleForward | None,
    top_k: int | None,
    examples: int,
    outputs: str = "logits",
) -> dict[str, SequenceMeasurement]:
    """Run every sequence over this process's ``batches`` in one pass and return metrics synced over all processes.

    The chunks come from :func:`~invariance_lightning.metrics.evaluate.iter_sequence_logits` (the loop
    ``evaluate_sequences`` uses): batches are used one at a time, each through every sequence
    (``batch_size`` bounds the frames per forward pass); each measurement keeps this process's
    ``examples`` most-flipping images. Every process must call this (syncing is collective), also
    with no batches. Raises on every process: ``ValueError`` if any process met targets outside
    ``[0, num_classes)`` or outputs the loop rejects (e.g. probabilities outside [0, 1]), then
    :class:`NonFiniteLogitsError` if any process saw non-finite logits.
    ``outputs`` says how the module's outputs become logits (see
    :func:`~invariance_lightning.metrics.outputs.class_logits`: a binary module's ``(N,)`` or ``(N, 1)`` logit
    gives two classes; ``"probabilities"`` for a module ending in a softmax or sigmoid).
    """
    device = pl_module.device
    metrics = {name: TransformConsistency(top_k=top_k, num_frames=len(s)).to(device) for name, s in sequences.items()}
    kept = {name: FlipExamples(examples) for name in sequences}
    predicted = {name: torch.zeros(num_classes, dtype=torch.long, device=device) for name in sequences}
    bad_input = nonfinite = None
    with evaluation_mode(pl_module), trainer.precision_plugin.val_step_context():
        chunks = iter_sequence_logits(
            pl_module,
            batches,
            None,
            sequences,
            batch_size=batch_size,
            normalize=normalize,
            device=device,
            outputs=outputs,
            forward_fn=cast("ForwardFn | None", forward_fn),  # called with pl_module only
        )
        try:
            for chunk in chunks:
                bad_input = targets_error(chunk.targets, num_classes, split)
                if bad_input is not None:
                    break
                check_finite_logits("measure_sequences", f"the {split!r} logits of {chunk.sequence!r}", chunk.logits)
                metrics[chunk.sequence].update(chunk.logits.float(), chunk.targets)
                predictions = chunk.logits.argmax(dim=-1)
                predicted[chunk.sequence] += torch.bincount(predictions.flatten(), minlength=num_classes)[:num_classes]
                kept[chunk.sequence].add(chunk.images, predictions.to(chunk.images.device), chunk.targets)
        except NonFiniteLogitsError as error:
            nonfinite = str(error)
        except ValueError as error:  # a later batch the loop rejects (e.g. fractional targets): raise on every process
            bad_input = f"{split!r} batch: {error}"
    if not trainer.strategy.reduce_boolean_decision(bad_input is None, all=True):
        raise ValueError(bad_input or f"another process met {split!r} targets or outputs it could not measure")
    if not trainer.strategy.reduce_boolean_decision(nonfinite is None, all=True):
        raise NonFiniteLogitsError(nonfinite or "the model produced NaN or infinite logits on another process")
    return {
        name: SequenceMeasurement(
            metrics[name].compute(), kept[name], trainer.strategy.reduce(predicted[name], reduce_op="sum").cpu()
        )
        for name in sequences
    }
