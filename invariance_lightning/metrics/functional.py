"""Functional consistency metrics over a model's outputs on a sequence of transformed frames.

``logits`` have shape ``(N, T, C)``: N images, T frames in sequence order, C classes. No frame is a reference:
the statistics compare consecutive frames (flips, MAC, top-k changes) or all pairs of frames (consistency).
The statistics are sums and counts, so that batches and processes combine by addition.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from invariance_lightning.validation import check_finite_logits, check_optional_int

#: Names of the additive statistics, in a fixed order.
STAT_NAMES = (
    "num_images",
    "flips",
    "agreeing_pairs",
    "abs_top1_change",
    "topk_rank_changes",
    "num_targets",
    "correct",
    "all_correct",
)


def check_logits(
    logits: Any, target: Any = None, *, num_classes: int | None = None, owner: str = "transform_consistency"
) -> tuple[Tensor, Tensor | None]:
    """Validate ``logits`` (N, T, C) and the optional ``target`` (N,); raise ValueError/TypeError on bad input,
    :class:`~invariance_lightning.validation.NonFiniteLogitsError` (a ValueError) for NaN or infinite logits."""
    expected = "a floating-point (N, T, C) tensor: N images, T >= 2 frames to compare, C >= 1 classes"
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"{owner}: logits must be {expected}, got {got}")
    if logits.ndim != 3 or logits.shape[1] < 2 or logits.shape[2] < 1:
        raise ValueError(f"{owner}: logits must be {expected}, got shape {tuple(logits.shape)}")
    classes = logits.shape[2]
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"{owner}: logits must have C=num_classes={num_classes} classes, got C={classes}")
    check_finite_logits(owner, "logits", logits)
    if target is None:
        return logits, None
    expected = f"an integer tensor of class indices in [0, {classes}) of shape (N,) = ({logits.shape[0]},)"
    integer = isinstance(target, Tensor) and not (target.is_floating_point() or target.is_complex())
    if not integer or target.dtype == torch.bool:
        got = f"dtype {target.dtype}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(f"{owner}: target must be {expected}, got {got}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"{owner}: target must be {expected}, got shape {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
        low, high = int(target.min()), int(target.max())
        raise ValueError(f"{owner}: target must be {expected}, got values in [{low}, {high}]")
    return logits, target.to(logits.device)


def consistency_stats(logits: Tensor, target: Tensor | None = None, top_k: int | None = 5) -> dict[str, Tensor]:
    """Additive statistics of one batch of validated ``logits`` (N, T, C) and ``target`` (N,) or None.

    A ``top_k`` above C compares the full ranking of the C classes.
    """
    num_images, num_frames, num_classes = logits.shape
    device = logits.device
    preds = logits.argmax(dim=-1)  # (N, T)
    probs = logits.float().softmax(dim=-1)

    changed = preds[:, 1:] != preds[:, :-1]  # (N, T-1)
    agree = preds[:, :, None] == preds[:, None, :]  # (N, T, T)
    upper = torch.triu(torch.ones(num_frames, num_frames, dtype=torch.bool, device=device), diagonal=1)
    previous_top1 = preds[:, :-1, None]
    prob_before = probs[:, :-1].gather(-1, previous_top1).squeeze(-1)
    prob_after = probs[:, 1:].gather(-1, previous_top1).squeeze(-1)

    stats = {
        "num_images": torch.tensor(num_images, dtype=torch.long, device=device),
        "flips": changed.sum(dim=0),
        "agreeing_pairs": (agree & upper).sum(),
        "abs_top1_change": (prob_after - prob_before).abs().double().sum(dim=0),
        "topk_rank_changes": torch.tensor(0, dtype=torch.long, device=device),
        "num_targets": torch.tensor(0, dtype=torch.long, device=device),
        "correct": torch.zeros(num_frames, dtype=torch.long, device=device),
        "all_correct": torch.tensor(0, dtype=torch.long, device=device),
    }
    if top_k is not None:
        ranks = logits.topk(min(top_k, num_classes), dim=-1).indices  # (N, T, k), classes by decreasing logit
        stats["topk_rank_changes"] = (ranks[:, 1:] != ranks[:, :-1]).sum()
    if target is not None:
        hits = preds == target[:, None]
        stats["num_targets"] = stats["num_images"].clone()
        stats["correct"] = hits.sum(dim=0)
        stats["all_correct"] = hits.all(dim=1).sum()
    return stats


def consistency_from_stats(stats: dict[str, Tensor], top_k: int | None = 5) -> dict[str, Tensor]:
    """Turn summed statistics into the metric dictionary (see ``transform_consistency``)."""
    num_images = int(stats["num_images"])
    if num_images == 0:
        raise ValueError("no images were measured: update() was never called with a non-empty batch")
    num_transitions = num_images * stats["flips"].numel()
    num_frames = stats["flips"].numel() + 1
    num_pairs = num_images * num_frames * (num_frames - 1) // 2
    out = {
        "flip_rate": stats["flips"].sum().double() / num_transitions,
        "consistency": stats["agreeing_pairs"].double() / num_pairs,
        "mac": stats["abs_top1_change"].sum() / num_transitions,
        "per_frame_flip_rate": stats["flips"].double() / num_images,
    }
    if top_k is not None:
        out[f"top{top_k}_distance"] = stats["topk_rank_changes"].double() / num_transitions
    num_targets = int(stats["num_targets"])
    if num_targets not in (0, num_images):
        raise ValueError(
            f"target was given for {num_targets} of {num_images} images: pass target on every update or on none"
        )
    if num_targets:
        out["accuracy"] = stats["correct"].sum().double() / (num_targets * num_frames)
        out["worst_case_accuracy"] = stats["all_correct"].double() / num_targets
        out["per_frame_accuracy"] = stats["correct"].double() / num_targets
    return {name: value.float() for name, value in out.items()}


def transform_consistency(
    logits: Tensor, target: Tensor | None = None, *, top_k: int | None = 5, num_classes: int | None = None
) -> dict[str, Tensor]:
    """Consistency of a classifier's predictions along a sequence of transformed frames.

    Args:
        logits: ``(N, T, C)`` outputs for T frames of N images, in sequence order.
        target: optional ``(N,)`` class indices; without it the accuracy keys are absent.
        top_k: rank depth of ``top{k}_distance``; ``None`` leaves that key out. A ``top_k`` above C
            compares the full ranking of the C classes (the distance is then at most C), and the key
            keeps the requested ``k``, so metric names do not change between datasets.
        num_classes: if given, ``C`` must equal it.

    Returns:
        A dict of float tensors:
        ``flip_rate`` (mean over images and t >= 1 of [argmax_t != argmax_{t-1}]),
        ``consistency`` (mean over images of the fraction of frame pairs t < t' whose argmax agree),
        ``mac`` (mean |p_t[c] - p_{t-1}[c]|, p = softmax, c = argmax of frame t-1),
        ``top{k}_distance`` (mean over adjacent frames of the number of rank positions
        1..min(k, C) whose class differs), ``per_frame_flip_rate`` (T-1,), and with ``target``:
        ``accuracy`` (mean over frames), ``worst_case_accuracy`` (fraction correct on every frame),
        ``per_frame_accuracy`` (T,).

    Raises:
        ValueError: for logits that are not ``(N, T, C)`` with N >= 1, T >= 2, C >= 1 and finite
            values, a ``target`` of the wrong length or out of ``[0, C)``, or a bad ``top_k``.
        TypeError: for non-tensor or integer logits, or a non-integer ``target``.

    Example:
        >>> logits = torch.tensor([[[3.0, 2.0, 1.0], [2.0, 3.0, 1.0]]])  # 1 image, 2 frames, 3 classes
        >>> out = transform_consistency(logits, top_k=5)  # top_k > C: the full ranking of 3 classes
        >>> out["flip_rate"].item(), out["top5_distance"].item()
        (1.0, 2.0)
    """
    check_optional_int("transform_consistency", "top_k", top_k, 1)
    logits, target = check_logits(logits, target, num_classes=num_classes)
    if logits.shape[0] == 0:
        raise ValueError(f"logits must hold at least one image, got N=0 (shape {tuple(logits.shape)})")
    return consistency_from_stats(consistency_stats(logits, target, top_k), top_k)
