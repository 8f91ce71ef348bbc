"""Run a model over every frame of every image and measure its consistency: the one evaluation loop.

:func:`iter_sequence_logits` is the loop (one pass over the images, each chunk through every sequence);
:func:`evaluate_sequences` turns its chunks into metrics, :func:`evaluate_invariance` is its one-sequence case,
and the Lightning callbacks consume the same chunks with synced metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from invariance_lightning.metrics.consistency import TransformConsistency
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.metrics.outputs import check_outputs, class_logits, class_targets, class_targets_error
from invariance_lightning.transforms.base import TransformSequence
from invariance_lightning.transforms.normalization import (
    Normalization,
    as_float_images,
    check_normalize,
    normalize_images,
)
from invariance_lightning.validation import check_images, check_int, check_targets

ForwardFn = Callable[[nn.Module, Tensor], Any]


def module_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batches(
    owner: str, images: Tensor | Iterable[Any], targets: Tensor | None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Uniform ``(images, targets)`` batches from a tensor or from an iterable of batches; targets as
    :func:`class_targets`."""
    if isinstance(images, Tensor):
        check_images(owner, "images", images, uint8=True)
        yield images, check_targets(owner, "targets", class_targets(targets), images.shape[0])
        return
    if targets is not None:
        raise ValueError(
            f"{owner}: targets must be None when images is a DataLoader/iterable (it yields (images, targets)), "
            f"got {type(targets).__name__}"
        )
    for batch in images:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
            yield batch[0], class_targets(batch[1]) if len(batch) > 1 else None
        else:
            raise TypeError(
                f"each batch must be an images tensor or an (images, targets) tuple, got {type(batch).__name__}"
            )


@dataclass(frozen=True)
class SequenceChunk:
    """The logits of a chunk of images under every frame of one sequence.

    ``images`` are the chunk as given (``(n, C, H, W)``, not yet converted to float or moved to the
    model's device), ``logits`` are ``(n, T, num_classes)`` and ``targets`` ``(n,)`` or None.
    """

    sequence: str
    images: Tensor
    logits: Tensor
    targets: Tensor | None


def check_sequences(owner: str, sequences: object) -> dict[str, TransformSequence]:
    """``sequences`` as a dict if it is a non-empty mapping of names to :class:`TransformSequence`."""
    expected = "a non-empty mapping of name -> TransformSequence"
    if not isinstance(sequences, Mapping):
        raise TypeError(f"{owner}: sequences must be {expected}, got {type(sequences).__name__}")
    if not sequences:
        raise ValueError(f"{owner}: sequences must be {expected}, got an empty mapping")
    for name, sequence in sequences.items():
        _one_sequence(owner, f"sequences[{name!r}]", sequence)
    return dict(sequences)


def _one_sequence(owner: str, name: str, sequence: object) -> dict[str, TransformSequence]:
    """``{"sequence": sequence}`` if ``sequence`` is a :class:`TransformSequence`."""
    if not isinstance(sequence, TransformSequence):
        kind = type(sequence).__name__
        raise TypeError(f"{owner}: {name} must be a TransformSequence (e.g. ShiftSequence), got {kind}")
    return {"sequence": sequence}


def iter_sequence_logits(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    targets: Tensor | None,
    sequences: Mapping[str, TransformSequence],
    *,
    batch_size: int = 256,
    normalize: Normalization | None = None,
    forward_fn: ForwardFn | None = None,
    device: torch.device | str | None = None,
    outputs: str = "logits",
) -> Iterator[SequenceChunk]:
    """Yield a :class:`SequenceChunk` per chunk of images and sequence, in one pass over ``images``.

    Each batch of ``images`` (a tensor is one batch; an iterable yields ``(images, targets)``
    batches) goes through every sequence in turn, so a streamed split is read once. A chunk holds
    ``batch_size // len(sequence)`` images (at least one); at most ``batch_size`` frames go through
    the model at once. ``normalize`` is applied after the geometric transform. The model's outputs
    become ``(N, C)`` logits by :func:`class_logits` (``outputs``; a binary model's ``(N,)`` or
    ``(N, 1)`` output gives C = 2), targets class indices by :func:`class_targets`. The caller owns the
    model's mode and grad state (see :func:`evaluate_sequences`).
    """
    owner = "iter_sequence_logits"
    check_outputs(owner, outputs)
    sequences = check_sequences(owner, sequences)
    check_int(owner, "batch_size", batch_size, 1)
    normalize = check_normalize(owner, "normalize", normalize)
    device = torch.device(device) if device is not None else module_device(model)
    forward = forward_fn or (lambda module, x: module(x))
    for batch_images, batch_targets in _batches(owner, images, targets):
        for name, sequence in sequences.items():
            num_frames = len(sequence)
            images_per_chunk = max(1, batch_size // num_frames)
            frames_per_forward = max(1, batch_size // images_per_chunk)
            for start in range(0, batch_images.shape[0], images_per_chunk):
                given = batch_images[start : start + images_per_chunk]
                chunk = as_float_images(given.to(device, non_blocking=True))
                passes = [
                    range(first, min(first + frames_per_forward, num_frames))
                    for first in range(0, num_frames, frames_per_forward)
                ]
                logits = torch.cat(
                    [_frame_logits(model, forward, sequence, chunk, frames, normalize, outputs) for frames in passes],
                    dim=1,
                )
                chunk_targets = None if batch_targets is None else batch_targets[start : start + images_per_chunk]
                yield SequenceChunk(name, given, logits, chunk_targets)


def _frame_logits(
    model: nn.Module,
    forward: ForwardFn,
    sequence: TransformSequence,
    chunk: Tensor,
    frames: range,
    normalize: Normalization | None,
    outputs: str,
) -> Tensor:
    """Logits ``(n, len(frames), C)`` of the ``n`` float images of ``chunk`` under ``frames`` of ``sequence``, in one
    forward pass (the model's outputs read by :func:`class_logits`)."""
    stacked = torch.stack([sequence.frame(chunk, t) for t in frames], dim=1).flatten(0, 1)  # image-major
    logits = class_logits(forward(model, normalize_images(stacked, normalize)), stacked.shape[0], outputs)
    return logits.unflatten(0, (chunk.shape[0], len(frames)))


def iter_frame_logits(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    sequence: TransformSequence,
    targets: Tensor | None = None,
    *,
    batch_size: int = 256,
    normalize: Normalization | None = None,
    forward_fn: ForwardFn | None = None,
    device: torch.device | str | None = None,
    outputs: str = "logits",
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(logits (n, T, C), targets (n,) or None)`` chunk by chunk: :func:`iter_sequence_logits` for one
    sequence. The caller owns the model's mode and grad state (see :func:`evaluate_invariance`)."""
    chunks = iter_sequence_logits(
        model,
        images,
        targets,
        _one_sequence("iter_frame_logits", "sequence", sequence),
        batch_size=batch_size,
        normalize=normalize,
        forward_fn=forward_fn,
        device=device,
        outputs=outputs,
    )
    for chunk in chunks:
        yield chunk.logits, chunk.targets


def evaluate_sequences(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    targets: Tensor | None,
    sequences: Mapping[str, TransformSequence],
    *,
    batch_size: int = 256,
    normalize: Normalization | None = None,
    top_k: int | None = 5,
    num_classes: int | None = None,
    forward_fn: ForwardFn | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    outputs: str = "logits",
) -> dict[str, dict[str, Tensor]]:
    """Measure how consistently ``model`` classifies every frame of every sequence applied to ``images``.

    The images are read once (see :func:`iter_sequence_logits`), so a DataLoader over a split is
    iterated once for all sequences.

    Args:
        model: a classifier returning ``(N, C)`` logits, or one binary logit ``(N,)`` / ``(N, 1)`` (read as
            two classes, see :func:`class_logits`); other outputs: use ``forward_fn``.
        images: ``(N, C, H, W)`` float or uint8 (then scaled to [0, 1]) images, or a DataLoader /
            iterable of ``(images, targets)`` batches (then ``targets`` must be None).
        targets: ``(N,)`` class indices (floats holding whole numbers, e.g. a binary model's ``0.``/``1.``, are
            accepted), or None (no accuracy keys).
        sequences: ``{name: sequence}``, e.g. ``sequence_preset("report")``.
        batch_size: at most this many frames go through the model at once, bounding peak memory.
        normalize: ``(mean, std)`` applied after the geometric transform, so that ``fill=0`` means
            black pixels for a model that expects normalized input.
        top_k, num_classes: as in :class:`TransformConsistency` (``top_k`` above the model's class
            count ranks all classes; the key stays ``top{top_k}_distance``).
        forward_fn: ``forward_fn(model, x) -> logits`` for models whose ``forward`` returns more (e.g.
            :class:`OutputKey` ``("logits")`` for ``model(x)["logits"]``).
        device: where to run; defaults to the model's device.
        progress: show a tqdm progress bar (one step per chunk and sequence).
        outputs: ``"logits"`` (default) or ``"probabilities"`` for a model ending in a softmax or sigmoid (its
            outputs, which must lie in [0, 1], are measured as log-probabilities; see :func:`class_logits`).

    Returns:
        ``{name: TransformConsistency's dict}``, on the CPU. The model is run in eval mode under
        ``torch.no_grad()``; afterwards every submodule has its own previous train/eval flag back
        (a BatchNorm frozen in eval mode inside a training model stays frozen).
    """
    check_outputs("evaluate_sequences", outputs)
    sequences = check_sequences("evaluate_sequences", sequences)
    device = torch.device(device) if device is not None else module_device(model)
    chunks: Iterable[SequenceChunk] = iter_sequence_logits(
        model,
        images,
        targets,
        sequences,
        batch_size=batch_size,
        normalize=normalize,
        forward_fn=forward_fn,
        device=device,
        outputs=outputs,
    )
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="evaluate", unit="chunk")
    metrics = {
        name: TransformConsistency(num_classes=num_classes, top_k=top_k, num_frames=len(sequence)).to(device)
        for name, sequence in sequences.items()
    }
    with evaluation_mode(model):
        for chunk in chunks:
            error = class_targets_error(chunk.targets, chunk.logits.shape[-1])
            if error is not None:
                raise ValueError(error)
            metrics[chunk.sequence].update(chunk.logits, chunk.targets)
    if any(int(metric.num_images) == 0 for metric in metrics.values()):
        raise ValueError("images is empty: at least one image is needed to measure invariance")
    return {name: {key: value.cpu() for key, value in metric.compute().items()} for name, metric in metrics.items()}


def evaluate_invariance(
    model: nn.Module,
    images: Tensor | Iterable[Any],
    targets: Tensor | None,
    sequence: TransformSequence,
    *,
    batch_size: int = 256,
    normalize: Normalization | None = None,
    top_k: int | None = 5,
    num_classes: int | None = None,
    forward_fn: ForwardFn | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    outputs: str = "logits",
) -> dict[str, Tensor]:
    """Measure how consistently ``model`` classifies every frame of ``sequence`` applied to ``images``:
    :func:`evaluate_sequences` for one sequence (same arguments; ``sequence``, e.g.
    ``ShiftSequence(max_shift=8)``, instead of a mapping), returning its metric dict."""
    check_outputs("evaluate_invariance", outputs)
    (metrics,) = evaluate_sequences(
        model,
        images,
        targets,
        _one_sequence("evaluate_invariance", "sequence", sequence),
        batch_size=batch_size,
        normalize=normalize,
        top_k=top_k,
        num_classes=num_classes,
        forward_fn=forward_fn,
        device=device,
        progress=progress,
        outputs=outputs,
    ).values()
    return metrics
