"""``TransformConsistency``: the torchmetrics ``Metric`` of prediction consistency along transform sequences."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from invariance_lightning._compat import PostComputeMetric
from invariance_lightning.metrics.functional import STAT_NAMES, check_logits, consistency_from_stats, consistency_stats
from invariance_lightning.validation import check_optional_int

_PER_TRANSITION = ("flips", "abs_top1_change")
_PER_FRAME = ("correct",)


class TransformConsistency(PostComputeMetric):
    """Flip rate, consistency, mean absolute change and accuracy of predictions along frame sequences.

    ``update(logits, target=None)`` takes logits ``(N, T, C)`` (the model's outputs on T frames of N
    images, in sequence order) and optional class indices ``(N,)``. ``compute()`` returns the
    dict documented in :func:`~invariance_lightning.metrics.transform_consistency`. Every state is a
    sum or count reduced with ``dist_reduce_fx="sum"``, so distributed results equal single-process
    results on the same images.

    Args:
        num_classes: if given, every update's ``C`` must equal it.
        top_k: rank depth of ``top{k}_distance`` (``None`` to skip it). A ``top_k`` above the number
            of classes C (given or seen) compares the full ranking of the C classes; the key keeps
            the requested ``k`` so that metric names are the same on every dataset.
        num_frames: T, if known in advance. Otherwise it is taken from the first update. Give it
            when a process may see no data under DDP, so that its (empty) states have the right shape.

    Example:
        >>> import torch
        >>> metric = TransformConsistency(top_k=None)
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # one image, 3 frames
        >>> metric.update(logits, torch.tensor([1]))
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items() if v.ndim == 0}
        {'flip_rate': 0.5, 'consistency': 0.3333, 'mac': 0.3808, 'accuracy': 0.6667, 'worst_case_accuracy': 0.0}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    # states (add_state) read as attributes; the others are read by name
    correct: Tensor
    num_images: Tensor

    def __init__(
        self, num_classes: int | None = None, top_k: int | None = 5, num_frames: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        for name, value, least in (("num_classes", num_classes, 1), ("top_k", top_k, 1), ("num_frames", num_frames, 2)):
            check_optional_int("TransformConsistency", name, value, least)
        self.num_classes = num_classes
        self.top_k = top_k
        self.num_frames = num_frames
        for name in STAT_NAMES:
            if name in _PER_TRANSITION or name in _PER_FRAME:
                length = 0 if num_frames is None else num_frames - (name in _PER_TRANSITION)
                dtype = torch.double if name == "abs_top1_change" else torch.long
                default = torch.zeros(length, dtype=dtype)
            else:
                default = torch.tensor(0, dtype=torch.long)
            self.add_state(name, default=default, dist_reduce_fx="sum")

    def _frames_seen(self) -> int | None:
        """T fixed by ``num_frames`` or by an earlier update; None while unknown."""
        length = self.correct.numel()
        return length if length else self.num_frames

    def update(self, logits: Tensor, target: Tensor | None = None) -> None:
        """Accumulate one batch: ``logits`` (N, T, C) and optional ``target`` (N,)."""
        logits, target = check_logits(logits, target, num_classes=self.num_classes, owner="TransformConsistency")
        expected = self._frames_seen()
        if expected is not None and logits.shape[1] != expected:
            raise ValueError(
                f"TransformConsistency: logits must have the T={expected} frames it has seen (one metric per "
                f"sequence), got T={logits.shape[1]}"
            )
        for name, value in consistency_stats(logits, target, self.top_k).items():
            current = getattr(self, name)
            if current.numel() != value.numel():  # first update fixes T for per-frame states
                current = torch.zeros_like(value, dtype=current.dtype)
            setattr(self, name, current + value)

    def after_compute(self, result: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-frame curves stay 1-D: torchmetrics squeezes one-element results (T=2 has one transition) to 0-d."""
        return {name: value.reshape(-1) if name.startswith("per_frame_") else value for name, value in result.items()}

    def compute(self) -> dict[str, Tensor]:
        """The metric dict; raises ValueError if no image was measured."""
        return consistency_from_stats({name: getattr(self, name) for name in STAT_NAMES}, self.top_k)
