"""Consistency regularization: penalize prediction changes between two views of each training image."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from invariance_lightning.transforms.normalization import check_normalize, normalize_images
from invariance_lightning.validation import check_choice, check_images, check_int, check_number

__all__ = ["CONSISTENCY_KINDS", "ConsistencyRegularization", "consistency_loss"]

ConsistencyKind = Literal["symmetric_kl", "js", "mse", "logit_mse", "top1_margin"]
#: Values accepted for ``kind``.
CONSISTENCY_KINDS: tuple[str, ...] = ("symmetric_kl", "js", "mse", "logit_mse", "top1_margin")
#: The logit margin by which ``"top1_margin"`` asks both views to put their joint top-1 class ahead of every other.
TOP1_MARGIN = 1.0


def _margin_shortfall(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per row, how far ``classes``' logit falls short of leading every other logit by :data:`TOP1_MARGIN` (>= 0)."""
    chosen = logits.gather(1, classes[:, None]).squeeze(1)
    rival = logits.scatter(1, classes[:, None], float("-inf")).amax(dim=1)
    return F.relu(TOP1_MARGIN - (chosen - rival))


def consistency_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, kind: ConsistencyKind = "symmetric_kl"
) -> torch.Tensor:
    """Mean over the batch of a divergence between the softmax predictions of two views, shape ``(N, C)`` each.

    - ``symmetric_kl``: ``(KL(p_a || p_b) + KL(p_b || p_a)) / 2``, in nats.
    - ``js``: Jensen-Shannon divergence ``(KL(p_a || m) + KL(p_b || m)) / 2`` with ``m = (p_a + p_b) / 2``, in nats
      (at most ``log 2``).
    - ``mse``: squared Euclidean distance between the probability vectors.
    - ``logit_mse``: mean squared difference of the logits, each vector centred on its mean first (softmax ignores a
      common offset, so the penalty does too): logit pairing (Kannan et al. 2018). Unlike the others it does not
      saturate for confident predictions: it keeps pulling the whole logit vectors together.
    - ``top1_margin``: top-1 agreement. The class both views favour jointly (arg-max of ``log p_a + log p_b``) must
      lead every other class by :data:`TOP1_MARGIN` logit in each view; the penalty is the mean shortfall (a hinge).
      Not a divergence: two identical views with a smaller margin are penalized too. The divergences barely see a
      near tie that flips (``p = (0.51, 0.49)`` against ``(0.49, 0.51)``: symmetric KL 0.0008 nats), which is where a
      one-pixel shift changes the top-1; this penalty is largest there, and zero once both views agree by the margin.

    Gradients flow into both views. Computed in float32 (from log-softmax for the divergences).
    """
    check_choice("consistency_loss", "kind", kind, CONSISTENCY_KINDS)
    if not (torch.is_tensor(logits_a) and torch.is_tensor(logits_b)):
        raise TypeError("consistency_loss: `logits_a` and `logits_b` must be tensors")
    if logits_a.ndim != 2 or logits_a.shape != logits_b.shape:
        raise ValueError(
            "consistency_loss: expected two (N, C) logit tensors of the same shape, got "
            f"{tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
        )
    if kind == "top1_margin":
        a, b = logits_a.float(), logits_b.float()
        joint = (F.log_softmax(a, dim=1) + F.log_softmax(b, dim=1)).argmax(dim=1)
        return (_margin_shortfall(a, joint) + _margin_shortfall(b, joint)).mean() / 2
    if kind == "logit_mse":
        centred_a = logits_a.float() - logits_a.float().mean(dim=1, keepdim=True)
        centred_b = logits_b.float() - logits_b.float().mean(dim=1, keepdim=True)
        return (centred_a - centred_b).square().mean(dim=1).mean()
    log_a = F.log_softmax(logits_a.float(), dim=1)
    log_b = F.log_softmax(logits_b.float(), dim=1)
    if kind == "mse":
        return (log_a.exp() - log_b.exp()).square().sum(dim=1).mean()
    if kind == "symmetric_kl":
        pointwise = (log_a.exp() - log_b.exp()) * (log_a - log_b)  # p_a log(p_a/p_b) + p_b log(p_b/p_a)
        return pointwise.sum(dim=1).mean() / 2
    log_m = torch.logsumexp(torch.stack([log_a, log_b]), dim=0) - math.log(2)
    kl_am = F.kl_div(log_m, log_a, reduction="batchmean", log_target=True)
    kl_bm = F.kl_div(log_m, log_b, reduction="batchmean", log_target=True)
    return (kl_am + kl_bm) / 2


class ConsistencyRegularization(nn.Module):
    """``logits, penalty = reg(model, images)``: predictions on ``images`` and a weighted consistency penalty.

    The model runs once on the concatenation of ``images`` and ``view(images)`` (so BatchNorm sees both views);
    ``penalty = weight * consistency_loss(logits, logits_of_view, kind)``. Use the returned logits for the task loss::

        logits, penalty = self.consistency(self.model, images)
        loss = F.cross_entropy(logits, targets) + penalty

    ``view`` maps a batch to a randomly transformed batch of the same shape. The default is a random integer
    translation of each image by up to ``max_shift`` pixels per axis (as the ``translate`` preset) whose vacated
    pixels are black, as in the measurement's ``"zeros"`` mode: ``images`` are usually already normalized, so
    give the ``mean``/``std`` they were normalized with, and the border gets black's normalized value
    ``(0 - mean) / std`` per channel, exactly what :class:`BatchAugmentation` makes of a black pixel. Without
    ``mean``/``std`` the border is 0 (black for images in ``[0, 1]``). With ``weight == 0`` the second view is
    skipped and the penalty is a zero tensor, so the run is exactly an unregularized one.
    """

    def __init__(
        self,
        weight: float,
        *,
        view: Callable[[torch.Tensor], torch.Tensor] | None = None,
        kind: ConsistencyKind = "symmetric_kl",
        max_shift: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        owner = "ConsistencyRegularization"
        check_number(owner, "weight", weight, low=0)
        check_choice(owner, "kind", kind, CONSISTENCY_KINDS)
        check_int(owner, "max_shift", max_shift, 1)
        if view is not None and not callable(view):
            raise TypeError(f"ConsistencyRegularization: `view` must be callable, got {type(view).__name__}")
        normalization = None if mean is None and std is None else check_normalize(owner, "mean and std", (mean, std))
        if view is not None and normalization is not None:
            raise ValueError(
                "ConsistencyRegularization: `mean`/`std` set the black fill of the default view; a custom `view` "
                "fills its own border"
            )
        self.weight = float(weight)
        self.kind = kind
        self.max_shift = max_shift
        self.view = view
        #: Value of the default view's vacated pixels: one per channel (black, normalized) or 0.
        self.fill: float | tuple[float, ...] = 0.0
        if normalization is not None:
            black = torch.zeros(1, len(normalization[0]), 1, 1)
            self.fill = tuple(normalize_images(black, normalization).flatten().tolist())
        self._shifts: dict[tuple[int, int], nn.Module] = {}

    def _default_view(self, images: torch.Tensor) -> torch.Tensor:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if not self.max_shift < min(size):
            raise ValueError(
                f"ConsistencyRegularization: `max_shift`={self.max_shift} must be below the image size {size}"
            )
        if isinstance(self.fill, tuple):  # one channel per mean/std value
            check_images("ConsistencyRegularization", "images", images, channels=len(self.fill))
        if size not in self._shifts:
            crop = K.RandomCrop(size, padding=self.max_shift, fill=self.fill)
            self._shifts[size] = K.AugmentationSequential(crop)
        return self._shifts[size](images)

    def forward(
        self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits on images, weighted penalty)``."""
        if self.weight == 0:
            logits = model(images)
            return logits, logits.new_zeros(())
        view = self.view(images) if self.view is not None else self._default_view(images)
        if view.shape != images.shape:
            raise ValueError(
                f"ConsistencyRegularization: `view` must keep the batch shape {tuple(images.shape)}, "
                f"got {tuple(view.shape)}"
            )
        logits, logits_view = model(torch.cat([images, view])).split(len(images))
        return logits, self.weight * consistency_loss(logits, logits_view, self.kind)
