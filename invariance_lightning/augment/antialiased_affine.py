"""A kornia ``RandomAffine`` that low-pass filters each image before shrinking it.

``kornia.augmentation.RandomAffine`` resamples with ``grid_sample``, whose bilinear kernel is one input pixel
wide whatever the scale: shrinking by a factor ``s < 1`` then aliases (``F.interpolate(..., antialias=True)``
widens its kernel to ``1 / s`` input pixels, ``grid_sample`` cannot). :class:`AntialiasedRandomAffine` blurs each
image with a Gaussian before the warp, with a per-image, per-axis standard deviation chosen so that blur plus
bilinear interpolation have the variance of the antialiased triangle filter ``F.interpolate`` would use for that
shrink factor (see :func:`antialias_sigma`). Images that are enlarged get no blur. All images of a batch are blurred
in one ``kornia.filters.gaussian_blur2d`` call, with a kernel size fixed at construction from the smallest scale.
"""

from __future__ import annotations

import math
from typing import Any

import kornia.augmentation as K
import torch
from kornia.filters import gaussian_blur2d

__all__ = ["AntialiasedRandomAffine", "antialias_sigma"]

# gaussian_blur2d requires a positive sigma; at this value every off-centre tap underflows to exactly 0, so the blur
# of an image that is not shrunk is an exact identity.
_MIN_SIGMA = 1e-3


def antialias_sigma(scale: torch.Tensor) -> torch.Tensor:
    """Gaussian pre-blur (in input pixels) for resampling by magnification ``scale`` with bilinear interpolation.

    A triangle filter of half-width ``1 / s`` (what ``F.interpolate(antialias=True)`` uses to shrink by ``s``) has
    variance ``1 / (6 s^2)``; bilinear interpolation already contributes ``1 / 6``. The pre-blur supplies the
    difference: ``sigma = sqrt(max(1 / s^2 - 1, 0) / 6)``, zero for ``s >= 1``. ``scale`` must be positive (it is
    not checked here, which would synchronize with the GPU on every batch).
    """
    if not torch.is_tensor(scale):
        raise TypeError(f"antialias_sigma: `scale` must be a tensor, got {type(scale).__name__}")
    return ((scale.reciprocal().square() - 1).clamp_min(0) / 6).sqrt()


class AntialiasedRandomAffine(K.RandomAffine):
    """``kornia.augmentation.RandomAffine`` with an isotropic ``scale`` range, antialiased when it shrinks.

    Arguments are those of ``RandomAffine`` except that ``scale`` must be ``None`` or a ``(min, max)`` pair and ``p``
    defaults to 1 (every image is transformed). The blur is computed from the sampled affine matrix: its column
    norms are the magnifications of the input's x and y axes (exact for scale, rotation and translation; shear is
    approximated the same way).
    """

    def __init__(
        self,
        degrees: float | tuple[float, float] = 0.0,
        translate: tuple[float, float] | None = None,
        scale: tuple[float, float] | None = None,
        *,
        p: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
            raise ValueError(f"AntialiasedRandomAffine: `scale` must be a pair 0 < min <= max, got {scale!r}")
        super().__init__(degrees, translate=translate, scale=scale, p=p, **kwargs)
        smallest = 1.0 if scale is None else min(float(scale[0]), 1.0)
        max_sigma = float(antialias_sigma(torch.tensor(smallest)))
        # 3 sigma on each side keeps all but 0.3% of the Gaussian's mass.
        self.blur_kernel_size = 2 * math.ceil(3 * max_sigma) + 1

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.blur_kernel_size > 1 and isinstance(transform, torch.Tensor):
            magnification = transform[:, :2, :2].norm(dim=1)  # (B, 2): x axis, y axis
            sigma = antialias_sigma(magnification.to(torch.float32)).clamp_min(_MIN_SIGMA)
            input = gaussian_blur2d(input, self.blur_kernel_size, sigma.flip(-1))  # kornia wants (sigma_y, sigma_x)
        return super().apply_transform(input, params, flags, transform)
