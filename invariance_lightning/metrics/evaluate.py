"""Run a model over every frame of every image and measure its consistency."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from kornia.enhance import normalize as kornia_normalize
from torch import Tensor, nn

from invariance_lightning.metrics.consistency import TransformConsistency
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.transforms.base import TransformSequence

ForwardFn = Callable[[nn.Module, Tensor], Tensor]
Normalization = tuple[Sequence[float], Sequence[float]]


def as_float_images(images: Tensor) -> Tensor:
    """uint8 images become floats in [0, 1]; floating-point images pass unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    return images


def module_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_normalize(normalize: Normalization | None) -> Normalization | None:
    """Validate a ``(mean, std)`` pair of per-channel sequences."""
    if normalize is None:
        return None
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise ValueError(f"normalize must be a (mean, std) pair of per-channel sequences, got {normalize!r}")
    mean, std = (tuple(float(v) for v in part) for part in normalize)
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalize needs mean and std of equal length with std > 0, got mean={mean} std={std}")
    return mean, std


def _batches(images: Tensor | Iterable[Any], targets: Tensor | None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Uniform ``(images, targets)`` batches from a tensor or from an iterable of batches."""
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if targets is not None and (targets.ndim != 1 or targets.shape[0] != images.shape[0]):
            raise ValueError(
                f"targets must have shape (N,) = ({images.shape[0]},) to match images, got {tuple(targets.shape)}"
            )
        yield images, targets
        return
    if targets is not None:
        raise ValueError("targets must be None when images is a DataLoader/iterable: it yields (images, targets)")
    for batch in images:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            raise TypeError(
                f"each batch must be an images tensor or an (images, targets) tuple, got {type(batch).__name__}"
            )


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
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(logits (n, T, C), targets (n,) or None)`` chunk by chunk, at most ``batch_size`` frames per forward.

    The caller owns the model's mode and grad state (see :func:`evaluate_invariance`).
    """
    if not isinstance(sequence, TransformSequence):
        raise TypeError(f"sequence must be a TransformSequence (e.g. ShiftSequence), got {type(sequence).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    normalize = check_normalize(normalize)
    device = torch.device(device) if device is not None else module_device(model)
    forward = forward_fn or (lambda module, x: module(x))
    num_frames = len(sequence)
    images_per_chunk = max(1, batch_size // num_frames)
    frames_per_forward = max(1, batch_size // images_per_chunk)
    for batch_images, batch_targets in _batches(images, targets):
        for start in range(0, batch_images.shape[0], images_per_chunk):
            chunk = as_float_images(batch_images[start : start + images_per_chunk].to(device, non_blocking=True))
            chunk_targets = None if batch_targets is None else batch_targets[start : start + images_per_chunk]
            outputs = []
            for first in range(0, num_frames, frames_per_forward):
                frames = [sequence.frame(chunk, t) for t in range(first, min(first + frames_per_forward, num_frames))]
                stacked = torch.stack(frames, dim=1).flatten(0, 1)  # (n * frames, C, H', W'), image-major
                if normalize is not None:
                    stacked = kornia_normalize(stacked, stacked.new_tensor(normalize[0]), stacked.new_tensor(normalize[1]))
                logits = forward(model, stacked)
                if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != stacked.shape[0]:
                    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise ValueError(
                        f"the model must return (N, C) logits for N={stacked.shape[0]} inputs, got {shape}; "
                        "pass forward_fn to extract logits from other outputs"
                    )
                outputs.append(logits.unflatten(0, (chunk.shape[0], len(frames))))
            yield torch.cat(outputs, dim=1), chunk_targets


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
) -> dict[str, Tensor]:
    """Measure how consistently ``model`` classifies every frame of ``sequence`` applied to ``images``.

    Args:
        model: a classifier returning ``(N, C)`` logits (or use ``forward_fn``).
        images: ``(N, C, H, W)`` float or uint8 (then scaled to [0, 1]) images, or a DataLoader /
            iterable of ``(images, targets)`` batches (then ``targets`` must be None).
        targets: ``(N,)`` class indices, or None (no accuracy keys).
        sequence: the frames, e.g. ``ShiftSequence(max_shift=8)``.
        batch_size: at most this many frames go through the model at once, bounding peak memory.
        normalize: ``(mean, std)`` applied after the geometric transform, so that ``fill=0`` means
            black pixels for a model that expects normalized input.
        top_k, num_classes: as in :class:`TransformConsistency` (``top_k`` above the model's class
            count ranks all classes; the key stays ``top{top_k}_distance``).
        forward_fn: ``forward_fn(model, x) -> logits`` for models whose ``forward`` returns more.
        device: where to run; defaults to the model's device.
        progress: show a tqdm progress bar.

    Returns:
        :class:`TransformConsistency`'s dict, on the CPU. The model is run in eval mode under
        ``torch.no_grad()``; afterwards every submodule has its own previous train/eval flag back
        (a BatchNorm frozen in eval mode inside a training model stays frozen).
    """
    device = torch.device(device) if device is not None else module_device(model)
    chunks = iter_frame_logits(
        model, images, sequence, targets, batch_size=batch_size, normalize=normalize, forward_fn=forward_fn, device=device
    )
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="evaluate_invariance", unit="chunk")
    metric = TransformConsistency(num_classes=num_classes, top_k=top_k, num_frames=len(sequence)).to(device)
    with evaluation_mode(model):
        for logits, chunk_targets in chunks:
            metric.update(logits, chunk_targets)
    if int(metric.num_images) == 0:
        raise ValueError("images is empty: evaluate_invariance needs at least one image")
    return {name: value.cpu() for name, value in metric.compute().items()}
